"""`curator validate`: check the predicted strategy rankings against real fine-tuning runs.

For each strategy (and seed), a fresh LoRA adapter is fine-tuned on that strategy's candidates
with the same budget (``curator.validation.finetune``), then the eval set is measured. The base model is
measured once. The measured ranking is then set beside every predicted one (influence in-task and
cross-task, each alignment metric, perplexity, sappl; ``curator.validation.predictors``) with
Spearman's rho and top-1 (``curator.validation.report``).

Layout of ``OUT`` (resumable: a finished run is never redone):

    validate.json                  format version, curator version, model fingerprint, eval hash, budget
    base/metrics.json              the un-fine-tuned model on the eval set
    runs/<strategy>/seed-<n>/      adapter/ (a peft adapter) and metrics.json, swapped in atomically
    predictions/                   computed predictor reports (selection/, study/, stores, scores)
    report.json, report.md, validate.png
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from curator import __version__
from curator.io.atomic import write_dir_atomic, write_json_atomic
from curator.config import DeviceConfig, ProgressFn, is_int, no_progress
from curator.io.data import Candidate, EvalItem, content_hash, load_candidates, load_eval
from curator.errors import InputError, MismatchError, StoreError
from curator.validation.finetune import EvalConfig, FinetuneConfig, evaluate, pick_examples, train_lora
from curator.model.models import DEFAULT_MODEL, LoadedModel, load_model
from curator.io.paths import safe_name
from curator.alignment.similarity import extract_answer
from curator.io.stats import finite_or_none
from curator.validation.predictors import PredictConfig, gather
from curator.validation.report import compare, ranking, write_validation_report

FORMAT_VERSION = 1
MEASURES = ("loss", "accuracy")
MANIFEST = "validate.json"
METRICS = "metrics.json"
ADAPTER = "adapter"


@dataclass(frozen=True)
class ValidateConfig:
    model: str = DEFAULT_MODEL
    strategies: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0,)
    train: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    measure: str = "loss"
    predictions: tuple[str, ...] = ()
    predict: bool = True
    prediction: PredictConfig = field(default_factory=PredictConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)  # where the model runs (curator.model.device)

    def __post_init__(self) -> None:
        if not self.seeds or any(not is_int(s) for s in self.seeds):
            raise InputError(f"seeds {self.seeds!r} are invalid: give one or more integers (--seeds N, --seed S)")
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"seeds {list(self.seeds)} repeat a seed: give distinct seeds")
        if self.measure not in MEASURES:
            raise InputError(f"--measure {self.measure!r} is unknown: use one of {', '.join(MEASURES)}")
        if self.measure == "accuracy" and not self.evaluation.accuracy:
            raise InputError("--measure accuracy needs generation accuracy: drop --no-accuracy")
        if self.strategies is not None and not self.strategies:
            raise InputError("--strategies is empty: name at least one strategy, or leave it out to use all")


@dataclass
class ValidateResult:
    out: Path
    report: dict[str, Any]
    paths: dict[str, Path]
    trained: list[tuple[str, int]]
    reused: list[tuple[str, int]]


def _select(cands: list[Candidate], wanted: Sequence[str] | None, path: str | Path) -> tuple[list[str], dict[str, list[Candidate]]]:
    by: dict[str, list[Candidate]] = {}
    for c in cands:
        by.setdefault(c.strategy, []).append(c)
    have = sorted(by)
    if wanted is None:
        return have, by
    chosen: list[str] = []
    for s in wanted:
        if s not in by:
            raise InputError(f"--strategies: unknown strategy {s!r}: {path} has {', '.join(have)}")
        if s not in chosen:
            chosen.append(s)
    return chosen, {s: by[s] for s in chosen}


def check_out(out: Path, marker: str = MANIFEST, what: str = "validate") -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder that no ``what`` run made (no ``marker``)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: pass a folder")
    if out.is_dir() and not (out / marker).exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise InputError(f"{out}: not empty and not a {what} folder (no {marker}): pass a new or empty --out")


def read_marker(path: Path, out: Path, version: int = FORMAT_VERSION) -> dict[str, Any]:
    """An output folder's marker JSON, refused when unreadable or written in another format version."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable ({type(exc).__name__}): delete {out} or pass a new --out") from None
    if old.get("format_version") != version:
        raise StoreError(f"{path}: format version {old.get('format_version')!r}, this curator writes {version}: pass a new --out")
    return old


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse an ``OUT`` made under other settings, naming the first field that differs."""
    path = out / MANIFEST
    if not path.exists():
        check_out(out)
        write_json_atomic(path, manifest)
        return
    old = read_marker(path, out)
    checks = [("model fingerprint", ("model", "fingerprint")), ("eval set", ("eval", "hash"))]
    checks += [(k, ("training", k)) for k in manifest["training"]] + [(k, ("evaluation", k)) for k in manifest["evaluation"] if k != "batch_size"]
    for label, (a, b) in checks:
        was, now = old.get(a, {}).get(b), manifest[a][b]
        if was != now:
            hint = " (pass --examples to fix the count)" if b == "examples" else ""
            raise MismatchError(f"{path}: this folder was made with {label}={was!r}, this run has {now!r}: rerun with the same setting{hint}, or pass a new --out")


def _run_key(strategy: str, seed: int, examples: Sequence[Candidate]) -> dict[str, Any]:
    return {"strategy": strategy, "seed": seed, "data": content_hash([[c.id, c.prompt, c.response] for c in examples])}


def _summary(values: list[float | None]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": finite_or_none(v.mean()), "std": finite_or_none(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size), "values": [float(x) for x in v]}


def _measured(strategies: list[str], seeds: Sequence[int], runs: dict[tuple[str, int], dict[str, Any]], base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for s in strategies:
        ms = [runs[(s, seed)] for seed in seeds]
        acc = [m["accuracy"] for m in ms]
        out[s] = {
            "loss": _summary([m["loss"] for m in ms]),
            "loss_gain": _summary([base["loss"] - m["loss"] for m in ms]),
            "accuracy": _summary(acc),
            "accuracy_gain": _summary([None if a is None or base["accuracy"] is None else a - base["accuracy"] for a in acc]),
            "train_loss_last": _summary([m["train_loss_last"] for m in ms]),
            "n_seeds": len(ms),
            "runs": [f"runs/{safe_name(s)}/seed-{seed}" for seed in seeds],
        }
    return out


def _measured_notes(measured: dict[str, dict[str, Any]], order: list[str], measure: str, n_seeds: int, n_gradable: int | None) -> list[str]:
    notes = []
    if n_gradable:
        notes.append(f"accuracy is measured on {n_gradable} eval items, so one item moves it by {1 / n_gradable:.3g}")
    if n_seeds == 1:
        notes.append("one seed: the spread between runs was not measured (pass --seeds 3 for mean ± std)")
    if len(order) >= 2:
        a, b = measured[order[0]][f"{measure}_gain"], measured[order[1]][f"{measure}_gain"]
        gap = a["mean"] - b["mean"]
        stds = [x for x in (a["std"], b["std"]) if x is not None]
        if stds and gap < max(stds):
            notes.append(f"the measured best ({order[0]}) leads {order[1]} by {gap:.4g}, less than one seed std ({max(stds):.4g}): the measured top-1 is not reliable at this budget")
        if gap == 0:
            notes.append(f"{order[0]} and {order[1]} tie on measured {measure} gain")
    if all(measured[s][f"{measure}_gain"]["mean"] is not None and measured[s][f"{measure}_gain"]["mean"] <= 0 for s in order):
        notes.append(f"no strategy improved {measure} over the base model at this budget")
    return notes


def _failures(predictors: dict[str, dict[str, Any]], measure: str) -> list[str]:
    out = []
    for name, p in predictors.items():
        a = p["against"].get(measure)
        if not a or not p["ranking"]:
            continue
        t = a["top1"]
        bits = []
        if t["hit"] is None and t["tied"]:
            bits.append("gives every strategy the same score, so it predicts nothing here")
        if t["hit"] is False:
            bits.append(f"picked {'/'.join(t['predicted'])}, the measured best was {'/'.join(t['measured'])}")
        if a["spearman"] is not None and a["spearman"] <= 0:
            bits.append(f"Spearman {a['spearman']:+.2f} (no positive agreement with the measured order)")
        if bits:
            out.append(f"{name}: " + "; ".join(bits))
    return out


def _run_one(out: Path, strategy: str, seed: int, cands: list[Candidate], n: int, loaded: LoadedModel, evals: list[EvalItem], config: ValidateConfig, training: dict[str, Any], model: dict[str, Any], progress: ProgressFn) -> tuple[bool, dict[str, Any]]:
    """(already finished?, metrics) of one strategy and seed: reused when its folder is complete, else trained and measured."""
    run_dir = out / "runs" / safe_name(strategy) / f"seed-{seed}"
    examples = pick_examples(cands, n, seed)
    key = _run_key(strategy, seed, examples)
    if (run_dir / METRICS).exists():
        done = json.loads((run_dir / METRICS).read_text())
        if done.get("run") != key:
            raise MismatchError(f"{run_dir}: trained on other {strategy!r} candidates than the candidates file now holds: delete {run_dir} to retrain it, or pass a new --out")
        progress(f"reuse {strategy} (seed {seed})", 1, 1)
        return True, done
    peft_model, stats = train_lora(loaded, examples, config.train, seed, progress, f"train {strategy} (seed {seed})")
    tuned = LoadedModel(loaded.spec, peft_model, loaded.tokenizer, loaded.fingerprint, loaded.placement)
    metrics = {**evaluate(tuned, evals, config.evaluation, progress, f"evaluate {strategy} (seed {seed})"), **stats, "run": key, "training": training, "model": model, "example_ids": [c.id for c in examples]}

    def fill(tmp: Path) -> None:  # the adapter and metrics.json appear together, or not at all
        peft_model.save_pretrained(str(tmp / ADAPTER))
        write_json_atomic(tmp / METRICS, metrics)

    write_dir_atomic(run_dir, fill)
    return False, metrics


def run_validate(candidates: str | Path, eval_path: str | Path, out: str | Path, config: ValidateConfig | None = None, progress: ProgressFn = no_progress, loaded: LoadedModel | None = None) -> ValidateResult:
    """Fine-tune per strategy (and seed), measure, and compare with the predictions; write the report.

    Returns a ``ValidateResult``: the report dict (each predictor's Spearman and top-1 against the
    measured ranking), its file paths, and which (strategy, seed) runs were trained or reused."""
    config = config or ValidateConfig()
    out_dir = Path(out)
    check_out(out_dir)
    strategies, by = _select(load_candidates(candidates), config.strategies, candidates)
    evals = load_eval(eval_path)
    if not evals:
        raise InputError(f"{eval_path}: no eval rows: give at least one eval item with a prompt, response and task")
    if config.measure == "accuracy" and all(extract_answer(e.response) is None for e in evals):
        raise InputError(f"--measure accuracy: no eval response in {eval_path} has an extractable final answer (e.g. 'The answer is (B).'): use --measure loss")
    smallest = min(by, key=lambda s: (len(by[s]), s))
    n = config.train.examples or len(by[smallest])
    if n > len(by[smallest]):
        raise InputError(f"--examples {n}: strategy {smallest!r} has only {len(by[smallest])} candidates: use --examples {len(by[smallest])} or fewer")
    progress("load model", 0, 1)
    loaded = loaded or load_model(config.model, config.device)
    progress("load model", 1, 1)
    training = {**config.train.to_dict(), "examples": n}
    manifest = {
        "format_version": FORMAT_VERSION,
        "curator_version": __version__,
        "model": {"spec": loaded.spec, "fingerprint": loaded.fingerprint},
        "eval": {"path": str(eval_path), "hash": content_hash([[e.id, e.prompt, e.response, e.task] for e in evals]), "n": len(evals)},
        "training": training,
        "evaluation": config.evaluation.to_dict(),
    }
    _check_manifest(out_dir, manifest)

    chosen = [c for s in strategies for c in by[s]]
    predictors = gather(chosen, evals, loaded, out_dir / "predictions", config.predictions, config.predict, config.prediction, progress)

    base_file = out_dir / "base" / METRICS
    base = json.loads(base_file.read_text()) if base_file.exists() else None
    if base is None or base.get("eval_hash") != manifest["eval"]["hash"]:
        base = {**evaluate(loaded, evals, config.evaluation, progress, "evaluate base model"), "eval_hash": manifest["eval"]["hash"]}
        write_dir_atomic(out_dir / "base", lambda tmp: write_json_atomic(tmp / METRICS, base))

    runs: dict[tuple[str, int], dict[str, Any]] = {}
    trained: list[tuple[str, int]] = []
    reused: list[tuple[str, int]] = []
    for s in strategies:
        for seed in config.seeds:
            done, metrics = _run_one(out_dir, s, seed, by[s], n, loaded, evals, config, training, manifest["model"], progress)
            runs[(s, seed)] = metrics
            (reused if done else trained).append((s, seed))

    measured = _measured(strategies, config.seeds, runs, base)
    measures = ["loss"] + (["accuracy"] if base.get("accuracy") is not None else [])
    gains = {m: {s: measured[s][f"{m}_gain"]["mean"] for s in strategies} for m in measures}
    order = ranking(gains[config.measure], True)
    compared = compare(predictors, gains)
    best = None
    if order:
        key_of = (lambda r: -r["loss"]) if config.measure == "loss" else (lambda r: r["accuracy"] if r["accuracy"] is not None else -1.0)
        seed = max(config.seeds, key=lambda sd: key_of(runs[(order[0], sd)]))
        best = f"runs/{safe_name(order[0])}/seed-{seed}/{ADAPTER}"
    report = {
        "format_version": FORMAT_VERSION,
        "curator_version": __version__,
        "model": manifest["model"],
        "candidates": str(candidates),
        "eval": manifest["eval"],
        "strategies": strategies,
        "seeds": list(config.seeds),
        "budget": training,
        "evaluation": config.evaluation.to_dict(),
        "measure": config.measure,
        "measures": measures,
        "base": {k: base[k] for k in ("loss", "token_loss", "accuracy", "n_gradable", "loss_by_task")},
        "measured": measured,
        "measured_ranking": order,
        "secondary_rankings": {m: ranking(gains[m], True) for m in measures if m != config.measure},
        "measured_notes": _measured_notes(measured, order, config.measure, len(config.seeds), base["n_gradable"] if "accuracy" in measures else None),
        "best_adapter": best,
        "predictors": compared,
        "failures": _failures(compared, config.measure),
        "prediction_config": config.prediction.to_dict() if config.predict else None,
    }
    paths = write_validation_report(report, out_dir)
    return ValidateResult(out_dir, report, paths, trained, reused)
