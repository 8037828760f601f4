"""`curator demo`: both signals on the bundled data, side by side.

Alignment: align → select (sample from the target model, score candidates, pick a strategy).
Generation: a small sample of candidates per strategy from the same model as teacher and target
(``curator generate --per-strategy``), aligned and selected the same way: the cheap first step of
choosing a strategy before generating a full set.
Influence: the warm-up-free pipeline index → influence → study. Then one ranking per prompt
from both signals, as annotators would see it.

The bundled data (``curator/assets/demo``, see its SOURCE.md) holds MMLU probe questions with one
candidate per strategy (direct, cot, clarify, evaluate) and held-out eval questions per subject.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from curator.alignment.align import AlignConfig, AlignResult, samples_path, score_candidates
from curator.config import DeviceConfig, GradientConfig, IndexConfig, ProgressFn, ProjectionConfig, no_progress
from curator.io.data import Candidate, EvalItem, load_candidates, load_eval
from curator.errors import InputError
from curator.influence.indexing import Featurizer, IndexResult, index_rows
from curator.influence.scoring import influence_scores, open_space, top_k
from curator.model.models import load_model
from curator.curation.ranking import rank_candidates
from curator.model.sampling import SamplingConfig
from curator.alignment.selection import select_strategy, write_selection_report
from curator.influence.study import run_study, write_report
from curator.io.tables import read_table, write_table


def demo_data_dir() -> Path:
    """The folder of the bundled demo data."""
    return Path(str(resources.files("curator.assets.demo")))


def subset(cands: list[Candidate], evals: list[EvalItem], tasks: int | None, probes: int | None) -> tuple[list[Candidate], list[EvalItem]]:
    """The first ``tasks`` tasks and the first ``probes`` probe groups of each (None keeps all)."""
    order: list[str] = []
    for c in cands:
        if c.task not in order:
            order.append(c.task)  # type: ignore[arg-type]
    keep_tasks = set(order[:tasks] if tasks else order)
    groups: dict[str, list[str]] = {}
    for c in cands:
        if c.task in keep_tasks and c.group not in groups.setdefault(c.task, []):  # type: ignore[arg-type]
            groups[c.task].append(c.group)  # type: ignore[index]
    keep_groups = {g for gs in groups.values() for g in (gs[:probes] if probes else gs)}
    return [c for c in cands if c.group in keep_groups], [e for e in evals if e.task in keep_tasks]


@dataclass
class DemoResult:
    out: Path
    train: IndexResult
    eval: IndexResult
    influence: Path
    top_k: Path
    report: dict[str, Path]
    verdicts: dict[str, str]
    summary: dict[str, Any] = field(default_factory=dict)
    scores: Path | None = None
    selection: dict[str, Any] | None = None
    selection_report: dict[str, Path] | None = None
    ranking: Path | None = None
    side_by_side: list[dict[str, Any]] = field(default_factory=list)
    aligned: AlignResult | None = None
    generated: Any = None  # the GenerateResult of the sample step
    sample_selection: dict[str, Any] | None = None
    sample_report: dict[str, Path] | None = None


def side_by_side(study: dict[str, Any], selection: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per strategy: relative influence (in-task, cross-task) and mean alignment metrics."""
    rows = []
    for s in study["strategies"]:
        row: dict[str, Any] = {"strategy": s}
        for part in ("in_task", "cross_task"):
            entry = study[part].get(s)
            row[f"{part}_influence"] = 0.0 if s == study["baseline"] else (entry or {}).get("mean_diff")
            row[f"{part}_verdict"] = "baseline" if s == study["baseline"] else (entry or {}).get("verdict")
        if selection is not None:
            for m in ("alignment", "perplexity", "sappl"):
                if m in selection["metrics"]:
                    row[m] = selection["stats"][s][m]["mean"]
        rows.append(row)
    return rows


SAMPLE_STRATEGIES = ("direct", "cot", "clarify", "evaluate", "reference", "own-words")


def generate_sample(loaded: Any, prompts: list[dict[str, Any]], out_dir: Path, per_strategy: int, sampling: SamplingConfig, max_length: int, progress: ProgressFn) -> tuple[Any, dict[str, Any], dict[str, Path]]:
    """The sample step: ``per_strategy`` prompts × SAMPLE_STRATEGIES from ``loaded`` (teacher and
    target), then align + select on them, reusing the main alignment's sample cache."""
    from curator.generation.generate import GenerateConfig, GeneratorSpec, generate_file
    from curator.generation.output import sidecar_path
    from curator.io.atomic import write_text_atomic

    prompts_path = out_dir / "sample" / "prompts.jsonl"
    prompts_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(prompts_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in prompts))
    spec = GeneratorSpec(model=loaded.spec)
    config = GenerateConfig(strategies=SAMPLE_STRATEGIES, teacher=spec, target=spec, per_strategy=per_strategy, temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens, seed=sampling.seed)
    sample = out_dir / "sample" / "candidates.jsonl"
    record = sidecar_path(sample)
    if record.exists():  # a rerun with other settings starts the sample afresh, as the demo's alignment does
        old = json.loads(record.read_text(encoding="utf-8"))
        if old.get("settings") != config.settings() or any(g.get("model") != loaded.spec for g in old.get("generators", {}).values()):
            sample.unlink(missing_ok=True)
            record.unlink()
    generated = generate_file(prompts_path, sample, config, progress, loaded=loaded)
    cands = load_candidates(generated.out)
    aligned = score_candidates(cands, loaded, AlignConfig(model=loaded.spec, sampling=sampling, max_length=max_length), samples_path(out_dir / "scores.parquet"), progress)
    write_table(aligned.table, out_dir / "sample" / "scores.parquet")
    selection = select_strategy(aligned.table)
    return generated, selection, write_selection_report(selection, out_dir / "sample" / "selection")


def run_demo(out: str | Path, model: str = "smollm2-135m", dim: int = 8192, max_length: int = 512, batch_size: int = 32, tasks: int | None = None, probes: int | None = None, align: bool = True, sampling: SamplingConfig | None = None, progress: ProgressFn = no_progress, device: DeviceConfig | None = None, per_strategy: int = 4) -> DemoResult:
    """Both signals on the bundled data into ``out``: align + select, index + influence + study, ranking.

    With ``align`` and ``per_strategy`` > 0, also the sample step of choosing a strategy:
    ``per_strategy`` prompts generated with each of SAMPLE_STRATEGIES, aligned and selected
    (``out/sample/``). Returns a ``DemoResult`` with the path of every artefact, the study's
    verdicts, the selection, and one side-by-side row per strategy.
    """
    if tasks is not None and tasks < 1 or probes is not None and probes < 1:
        raise InputError("--tasks and --probes must be integers >= 1")
    if per_strategy < 0:
        raise InputError(f"--per-strategy {per_strategy} is invalid: use an integer >= 0 (0 skips the sample step)")
    out_dir = Path(out)
    data = demo_data_dir()
    cands, evals = subset(load_candidates(data / "candidates.jsonl"), load_eval(data / "eval.jsonl"), tasks, probes)
    config = IndexConfig(model=model, projection=ProjectionConfig(dim=dim), gradient=GradientConfig(max_length=max_length), batch_size=batch_size)
    progress("load model", 0, 1)
    loaded = load_model(model, device)
    progress("load model", 1, 1)
    scores_path = selection = selection_paths = aligned = None
    if align:  # before LoRA is attached for the gradients
        aligned = score_candidates(cands, loaded, AlignConfig(model=model, sampling=sampling or SamplingConfig(), max_length=max_length), samples_path(out_dir / "scores.parquet"), progress)
        scores_path = write_table(aligned.table, out_dir / "scores.parquet")
        selection = select_strategy(aligned.table)
        selection_paths = write_selection_report(selection, out_dir / "selection")
    generated = sample_selection = sample_report = None
    if align and per_strategy:
        groups = {c.group for c in cands}
        prompts = [p for p in read_prompt_rows(data / "prompts.jsonl") if p["id"] in groups]
        generated, sample_selection, sample_report = generate_sample(loaded, prompts, out_dir, per_strategy, sampling or SamplingConfig(), max_length, progress)
    featurizer = Featurizer(config, loaded)
    train = index_rows(featurizer, cands, out_dir / "train_store", "candidates", progress=lambda s, d, t: progress("index candidates", d, t))
    ev = index_rows(featurizer, evals, out_dir / "eval_store", "eval", progress=lambda s, d, t: progress("index eval", d, t))
    space = open_space([out_dir / "train_store"], [out_dir / "eval_store"])
    table = influence_scores(space)
    infl_path = write_table(table, out_dir / "influence.parquet")
    topk_path = write_table(top_k(space, 3), out_dir / "top_k.csv")
    result = run_study(table)
    report = write_report(result, out_dir / "study")
    ranking_path = None
    if align:
        ranking_path = write_table(rank_candidates(read_table(scores_path), table), out_dir / "ranking.csv")  # type: ignore[arg-type]
    summary = {"baseline": result["baseline"], "n_candidates": len(cands), "n_eval": len(evals), "recommended": (selection or {}).get("recommended")}
    return DemoResult(out_dir, train, ev, infl_path, topk_path, report, result["verdicts"], summary, scores_path, selection, selection_paths, ranking_path, side_by_side(result, selection), aligned, generated, sample_selection, sample_report)


def read_prompt_rows(path: Path) -> list[dict[str, Any]]:
    """The bundled prompt rows as they are (for the sample step's own prompts file)."""
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
