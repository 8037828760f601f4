"""The predicted strategy rankings that `curator validate` checks: read from reports, or computed.

Predictors, one score per strategy each, oriented so the report knows which way is better:

- ``influence in-task`` / ``influence cross-task``: the swift study's paired relative influence
  against its baseline (the baseline scores 0); higher is better (``curator.influence.study``);
- every metric of the selection report: ``alignment`` (combined), ``embedding``, ``hidden``,
  ``rouge-l``, ``token-f1``, ``answer`` (higher is better), ``perplexity`` and ``sappl``
  (self-aligned perplexity; lower is better) (``curator.alignment.selection``).

Reports come from ``--predictions`` paths (a study or selection ``report.json``, a folder holding
one, or a ``curator demo --out`` folder holding ``study/`` and ``selection/``). What is still
missing is computed into ``OUT/predictions/`` with the same library calls as ``curator demo``:
align + select, and index + influence + study. A finished report there is reused by a rerun.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from curator.config import GradientConfig, IndexConfig, ProgressFn, ProjectionConfig, no_progress
from curator.io.data import Candidate, EvalItem
from curator.errors import InputError
from curator.alignment.metrics import ALL_METRICS, parse_metrics
from curator.model.models import LoadedModel
from curator.alignment.selection import METRIC_MEANING, METRIC_ORDER

IN_TASK = "influence in-task"
CROSS_TASK = "influence cross-task"
INFLUENCE_MEANING = {
    IN_TASK: "swift study: paired relative influence on the candidate's own eval task (baseline = 0)",
    CROSS_TASK: "swift study: paired relative influence on the other eval tasks (baseline = 0)",
}


@dataclass(frozen=True)
class PredictConfig:
    """How missing predictions are computed (the demo's defaults)."""

    metrics: tuple[str, ...] = ALL_METRICS
    samples: int = 4
    max_new_tokens: int = 128
    dim: int = 8192
    max_length: int = 512
    baseline: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(parse_metrics(",".join(self.metrics))))
        if self.samples < 1:
            raise InputError(f"--samples {self.samples} is invalid: use an integer >= 1")
        if self.dim < 1:
            raise InputError(f"--dim {self.dim} is invalid: use an integer >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "metrics": list(self.metrics)}


def _kind(report: Any) -> str | None:
    if not isinstance(report, dict):
        return None
    if {"in_task", "cross_task", "baseline", "strategies"} <= report.keys():
        return "study"
    if {"stats", "directions", "metrics", "strategies"} <= report.keys():
        return "selection"
    return None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: cannot read it as a JSON report ({type(exc).__name__}): pass a report.json written by `curator study` or `curator select`") from None


def read_reports(paths: Sequence[str | Path]) -> dict[str, tuple[dict[str, Any], str]]:
    """{'study'|'selection': (report, source path)} from ``--predictions`` paths."""
    found: dict[str, tuple[dict[str, Any], str]] = {}
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = [f for f in (p / "report.json", p / "study" / "report.json", p / "selection" / "report.json") if f.is_file()]
            if not files:
                raise InputError(f"{p}: no report.json, study/report.json or selection/report.json inside: pass a `curator study`/`select` report folder or a `curator demo --out` folder")
        elif p.is_file():
            files = [p]
        else:
            raise InputError(f"--predictions {p}: no such file or folder: pass a report.json or a folder holding one")
        for f in files:
            report = _load_json(f)
            kind = _kind(report)
            if kind is None:
                raise InputError(f"{f}: not a study or selection report (keys: {', '.join(sorted(report)[:8]) if isinstance(report, dict) else type(report).__name__}): pass a report.json written by `curator study` or `curator select`")
            if kind in found:
                raise InputError(f"{f}: a second {kind} report (the first is {found[kind][1]}): pass one study and at most one selection report")
            found[kind] = (report, str(f))
    return found


def _covers(report: dict[str, Any], strategies: Sequence[str]) -> bool:
    return set(strategies) <= set(report.get("strategies", []))


def compute_reports(
    cands: Sequence[Candidate],
    evals: Sequence[EvalItem],
    loaded: LoadedModel,
    out: Path,
    config: PredictConfig,
    need: set[str],
    progress: ProgressFn = no_progress,
) -> dict[str, tuple[dict[str, Any], str]]:
    """Compute the ``need``ed reports ('study', 'selection') into ``out``; finished ones are reused.

    ``loaded`` is not modified: the gradients run on a copy (LoRA is attached in place).
    """
    from curator.alignment.align import AlignConfig, samples_path, score_candidates
    from curator.influence.indexing import Featurizer, index_rows
    from curator.influence.scoring import influence_scores, open_space
    from curator.model.sampling import SamplingConfig
    from curator.alignment.selection import select_strategy, write_selection_report
    from curator.influence.study import run_study, write_report
    from curator.io.tables import write_table

    strategies = sorted({c.strategy for c in cands})
    found: dict[str, tuple[dict[str, Any], str]] = {}
    for kind in sorted(need):
        done = out / kind / "report.json"
        if done.is_file():
            report = _load_json(done)
            if _kind(report) == kind and _covers(report, strategies):
                found[kind] = (report, str(done))
    if "selection" in need and "selection" not in found:
        align_config = AlignConfig(model=loaded.spec, metrics=config.metrics, sampling=SamplingConfig(k=config.samples, max_new_tokens=config.max_new_tokens), max_length=config.max_length)
        aligned = score_candidates(list(cands), loaded, align_config, samples_path(out / "scores.parquet"), progress)
        write_table(aligned.table, out / "scores.parquet")
        selection = select_strategy(aligned.table)
        paths = write_selection_report(selection, out / "selection")
        found["selection"] = (selection, str(paths["json"]))
    if "study" in need and "study" not in found:
        baseline = config.baseline or ("direct" if "direct" in strategies else strategies[0])
        index_config = IndexConfig(model=loaded.spec, projection=ProjectionConfig(dim=config.dim), gradient=GradientConfig(max_length=config.max_length))
        copied = LoadedModel(loaded.spec, copy.deepcopy(loaded.model), loaded.tokenizer, loaded.fingerprint, loaded.placement)
        featurizer = Featurizer(index_config, copied)
        index_rows(featurizer, list(cands), out / "train_store", "candidates", progress=lambda s, d, t: progress("index candidates", d, t))
        index_rows(featurizer, list(evals), out / "eval_store", "eval", progress=lambda s, d, t: progress("index eval", d, t))
        table = influence_scores(open_space([out / "train_store"], [out / "eval_store"]))
        table = table[table["strategy"].isin(strategies)].reset_index(drop=True)
        study = run_study(table, baseline=baseline)
        paths = write_report(study, out / "study")
        found["study"] = (study, str(paths["json"]))
        del featurizer, copied
    return found


def predictor_table(reports: dict[str, tuple[dict[str, Any], str]], strategies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{predictor: {source, direction, meaning, values: {strategy: float | None}}} for ``strategies``."""
    table: dict[str, dict[str, Any]] = {}
    if "study" in reports:
        study, source = reports["study"]
        base = study["baseline"]
        for name, part in ((IN_TASK, "in_task"), (CROSS_TASK, "cross_task")):
            values: dict[str, float | None] = {}
            for s in strategies:
                if s == base:
                    values[s] = 0.0
                else:
                    entry = study.get(part, {}).get(s)
                    values[s] = None if entry is None or entry.get("mean_diff") is None else float(entry["mean_diff"])
            if all(v is None or s == base for s, v in values.items()):  # only the baseline's 0: no information
                values = {s: None for s in strategies}
            table[name] = {"source": source, "direction": "higher", "meaning": INFLUENCE_MEANING[name] + f"; baseline {base}", "values": values}
    if "selection" in reports:
        selection, source = reports["selection"]
        for m in [m for m in METRIC_ORDER if m in selection["metrics"]]:
            values = {}
            for s in strategies:
                entry = selection["stats"].get(s, {}).get(m)
                values[s] = None if entry is None or entry.get("mean") is None else float(entry["mean"])
            table[m] = {"source": source, "direction": selection["directions"][m], "meaning": METRIC_MEANING.get(m, m), "values": values}
    return table


def gather(
    cands: Sequence[Candidate],
    evals: Sequence[EvalItem],
    loaded: LoadedModel,
    out: Path,
    paths: Sequence[str | Path],
    compute: bool,
    config: PredictConfig,
    progress: ProgressFn = no_progress,
) -> dict[str, dict[str, Any]]:
    """The predictor table: reports from ``paths`` first, then (with ``compute``) the missing ones."""
    strategies = sorted({c.strategy for c in cands})
    reports = read_reports(paths)
    need = {k for k in ("study", "selection") if k not in reports}
    if compute and need:
        reports.update(compute_reports(cands, evals, loaded, out, config, need, progress))
    return predictor_table(reports, strategies)
