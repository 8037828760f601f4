"""The swift study: do a generation strategy's candidates help the eval tasks more than the baseline's?

Following "Shall Your Data Strategy Work? Perform a Swift Study", strategies are compared by
*relative influence*: the mean gradient cosine of a strategy's candidates to each eval task, minus
the same mean for the baseline strategy (``direct`` by default). The study also splits influence
into *in-task* (a candidate's influence on its own task) and *cross-task* (its mean influence on
the other eval tasks), compares each strategy with the baseline probe by probe (paired on
``group``), and puts a seeded percentile-bootstrap interval on each paired mean difference so a
verdict (better / worse / indistinguishable) is only claimed when the interval excludes zero.

The input is the influence table produced by the influence stage: one row per candidate with
``id``, ``strategy``, ``task``, ``group`` and one ``influence:<eval_task>`` float column per task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curator.io.atomic import write_bytes_atomic
from curator.errors import InputError
from curator.io.figures import closing, png, pyplot
from curator.influence.scoring import INFLUENCE_PREFIX
from curator.io.stats import finite_or_none

FORMAT_VERSION = 1
REQUIRED_COLUMNS = ("id", "strategy", "task", "group")
DEFAULT_BASELINE = "direct"
MIN_PROBES = 2


def eval_tasks(table: pd.DataFrame) -> list[str]:
    """Return the eval task names found in the table's ``influence:<task>`` columns, sorted."""
    return sorted(
        str(c)[len(INFLUENCE_PREFIX):]
        for c in table.columns
        if str(c).startswith(INFLUENCE_PREFIX) and len(str(c)) > len(INFLUENCE_PREFIX)
    )


def _validate(table: pd.DataFrame) -> list[str]:
    """Check the table's shape and return its eval tasks; raise InputError naming what is wrong."""
    if not isinstance(table, pd.DataFrame):
        raise InputError(
            f"influence table: expected a pandas DataFrame, got {type(table).__name__}; "
            "pass the table written by the influence stage"
        )
    if len(table) == 0:
        raise InputError("influence table is empty: score some candidates before running the study")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(
            f"influence table is missing required column(s): {', '.join(missing)}; "
            f"it needs {', '.join(REQUIRED_COLUMNS)} and influence:<eval_task> columns"
        )
    tasks = eval_tasks(table)
    if not tasks:
        raise InputError(
            "influence table has no 'influence:<eval_task>' columns: score the candidates "
            "against at least one eval task first"
        )
    for col in ("strategy", "group"):
        if table[col].isna().any():
            row = int(np.flatnonzero(table[col].isna().to_numpy())[0])
            raise InputError(f"influence table row {row}: column '{col}' is empty; every candidate needs one")
    dup = table["id"].astype(str).duplicated()
    if dup.any():
        raise InputError(
            f"influence table: candidate id {table['id'].astype(str)[dup].iloc[0]!r} appears more than "
            "once; ids must be unique"
        )
    for t in tasks:
        col = INFLUENCE_PREFIX + t
        if not pd.api.types.is_numeric_dtype(table[col]) or pd.api.types.is_bool_dtype(table[col]):
            raise InputError(f"influence table column '{col}' is not numeric; it must hold floats")
    return tasks


def _pick_baseline(strategies: list[str], baseline: str | None) -> str:
    """The baseline strategy: the one asked for, else ``direct``; raise InputError if unavailable."""
    available = ", ".join(strategies)
    if baseline is not None:
        if baseline not in strategies:
            raise InputError(
                f"baseline strategy {baseline!r} is not in the influence table (strategies: {available}); "
                f"pass --baseline with one of {available}"
            )
        return baseline
    if DEFAULT_BASELINE in strategies:
        return DEFAULT_BASELINE
    raise InputError(
        f"no '{DEFAULT_BASELINE}' strategy to use as the baseline (strategies: {available}); "
        f"pass --baseline with one of {available}"
    )


def _candidate_scores(table: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Per candidate: strategy, group, in-task and cross-task influence (NaN where undefined).

    Only candidates whose own task is an eval task get either score: "cross-task" means the other
    eval tasks, which is only defined relative to an own task. Cross-task needs 2+ eval tasks.
    """
    values = table[[INFLUENCE_PREFIX + t for t in tasks]].to_numpy(dtype=float)
    index = {t: i for i, t in enumerate(tasks)}
    own = [index.get(t) if isinstance(t, str) else None for t in table["task"]]
    in_task = np.full(len(table), np.nan)
    cross = np.full(len(table), np.nan)
    for r, i in enumerate(own):
        if i is None:
            continue
        in_task[r] = values[r, i]
        others = np.delete(values[r], i)
        others = others[~np.isnan(others)]
        if others.size:
            cross[r] = others.mean()
    return pd.DataFrame(
        {
            "strategy": table["strategy"].astype(str).to_numpy(),
            "group": table["group"].astype(str).to_numpy(),
            "in_task": in_task,
            "cross_task": cross,
        }
    )


def _bootstrap(diffs: np.ndarray, n_boot: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs``, resampling probes with replacement.

    Each call starts a fresh ``default_rng(seed)`` so a strategy's interval does not depend on which
    other strategies are in the table or in what order they are processed.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diffs.size, size=(n_boot, diffs.size))
    means = diffs[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


def _paired(
    scores: pd.DataFrame, measure: str, strategy: str, baseline: str, n_boot: int, seed: int, confidence: float
) -> tuple[dict[str, Any], int]:
    """Paired comparison of ``strategy`` with ``baseline`` on one measure; returns (entry, skipped groups)."""
    per_group = scores.groupby(["strategy", "group"])[measure].mean()  # averages a group's candidates
    s = per_group.get(strategy, pd.Series(dtype=float)).dropna()
    b = per_group.get(baseline, pd.Series(dtype=float)).dropna()
    common = s.index.intersection(b.index)
    diffs = (s.loc[common] - b.loc[common]).to_numpy(dtype=float)
    skipped = int(scores["group"].nunique() - diffs.size)
    entry: dict[str, Any] = {
        "mean_diff": finite_or_none(diffs.mean()) if diffs.size else None,
        "low": None,
        "high": None,
        "n_probes": int(diffs.size),
        "verdict": "indistinguishable",
        "note": None,
    }
    if diffs.size < MIN_PROBES:
        entry["note"] = "too few probes"
        return entry, skipped
    low, high = _bootstrap(diffs, n_boot, seed, confidence)
    entry["low"], entry["high"] = low, high
    entry["verdict"] = "better" if low > 0 else "worse" if high < 0 else "indistinguishable"
    return entry, skipped


def _fmt(x: float | None) -> str:
    """A signed 4-decimal number, or n/a."""
    return "n/a" if x is None else f"{x:+.4f}"


def _describe(entry: dict[str, Any], with_probes: bool) -> str:
    """The bracketed part of a verdict line: difference, interval, and probe count or note."""
    if entry["mean_diff"] is None:
        return f"(no paired probes: {entry['note']})"
    if entry["low"] is None:
        n = entry["n_probes"]
        return f"({_fmt(entry['mean_diff'])}, {n} probe{'s' if n != 1 else ''}: {entry['note']})"
    probes = f", {entry['n_probes']} probes" if with_probes else ""
    return f"({_fmt(entry['mean_diff'])} [{_fmt(entry['low'])}, {_fmt(entry['high'])}]{probes})"


def _verdict_line(strategy: str, baseline: str, in_task: dict[str, Any], cross: dict[str, Any]) -> str:
    """One human-readable line: the in-task verdict against the baseline, then the cross-task one."""
    word = in_task["verdict"]
    relation = "indistinguishable from" if word == "indistinguishable" else f"{word} than"
    return (
        f"{strategy}: {relation} {baseline} in-task {_describe(in_task, True)}; "
        f"{cross['verdict']} cross-task {_describe(cross, False)}"
    )


def run_study(
    table: pd.DataFrame,
    baseline: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Compare every strategy with the baseline by relative influence, in-task and cross-task.

    Relative influence is a *difference* of mean cosines, not a ratio: the baseline's mean cosine
    can be near zero or negative, where a ratio blows up or flips sign. In-task and cross-task
    differences are paired by ``group`` (each probe answered by both strategies), so probe
    difficulty cancels; groups lacking either strategy are skipped and counted. Returns a
    JSON-serialisable dict (plain floats, None for missing values): baseline, strategies,
    in_task and cross_task (mean difference with a bootstrap interval per strategy), verdicts.
    """
    tasks = _validate(table)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise InputError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not (isinstance(confidence, (int, float)) and 0.0 < float(confidence) < 1.0):
        raise InputError(f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")
    names = sorted(set(table["strategy"].astype(str)))
    if len(names) < 2:
        raise InputError(
            f"influence table has a single strategy ({names[0]}): nothing to compare; "
            "add candidates from at least one other strategy"
        )
    base = _pick_baseline(names, baseline)
    strategies = [base] + [s for s in names if s != base]

    cols = [INFLUENCE_PREFIX + t for t in tasks]
    by_strategy = table[cols].astype(float).groupby(table["strategy"].astype(str)).mean()
    mean = {s: {t: finite_or_none(by_strategy.at[s, INFLUENCE_PREFIX + t]) for t in tasks} for s in strategies}
    relative = {
        s: {
            t: (None if mean[s][t] is None or mean[base][t] is None else mean[s][t] - mean[base][t])
            for t in tasks
        }
        for s in strategies
    }

    scores = _candidate_scores(table, tasks)
    in_task: dict[str, dict[str, Any]] = {}
    cross_task: dict[str, dict[str, Any]] = {}
    skipped: dict[str, int] = {}
    verdicts: dict[str, str] = {}
    for s in strategies[1:]:
        in_task[s], skipped[s] = _paired(scores, "in_task", s, base, int(n_boot), int(seed), float(confidence))
        cross_task[s], _ = _paired(scores, "cross_task", s, base, int(n_boot), int(seed), float(confidence))
        if len(tasks) < 2:
            cross_task[s]["note"] = "needs 2+ eval tasks"
        verdicts[s] = _verdict_line(s, base, in_task[s], cross_task[s])

    return {
        "format_version": FORMAT_VERSION,
        "baseline": base,
        "strategies": strategies,
        "eval_tasks": tasks,
        "mean": mean,
        "relative": relative,
        "in_task": in_task,
        "cross_task": cross_task,
        "verdicts": verdicts,
        "n_boot": int(n_boot),
        "confidence": float(confidence),
        "seed": int(seed),
        "n_candidates": int(len(table)),
        "n_groups": int(scores["group"].nunique()),
        "skipped_groups": skipped,
    }


def _markdown(result: dict[str, Any]) -> str:
    """The human report: how to read it, the verdict lines, and the two tables."""
    base, tasks = result["baseline"], result["eval_tasks"]
    pct = f"{100 * result['confidence']:g}%"
    lines = [
        f"# Swift study: generation strategies vs `{base}`",
        "",
        "## How to read this",
        "",
        "Influence is the cosine between a candidate's projected LoRA gradient and an eval task's "
        "gradients: higher means training on the candidate should lower that task's eval loss more. "
        f"Relative influence is a strategy's mean influence minus the baseline's (`{base}`); it is a "
        "difference, not a ratio, because the baseline's mean can be near zero or negative. "
        "In-task influence is a candidate's influence on its own task; cross-task is its mean "
        "influence on the other eval tasks. Both are compared with the baseline probe by probe "
        f"(paired on group), with a {pct} percentile bootstrap interval over probes "
        f"({result['n_boot']} resamples, seed {result['seed']}). A strategy is called better or "
        "worse only when the interval excludes zero.",
        "",
        f"{result['n_candidates']} candidates, {len(result['strategies'])} strategies, "
        f"{len(tasks)} eval tasks.",
        "",
        "## Verdicts",
        "",
    ]
    lines += [f"- {result['verdicts'][s]}" for s in result["strategies"][1:]]
    lines += [
        "",
        f"## In-task and cross-task relative influence (paired, {pct} interval)",
        "",
        "| strategy | in-task Δ | in-task interval | in-task verdict | cross-task Δ | "
        "cross-task interval | cross-task verdict | probes | skipped groups |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["strategies"][1:]:
        cells = [s]
        for part in (result["in_task"][s], result["cross_task"][s]):
            interval = "n/a" if part["low"] is None else f"[{_fmt(part['low'])}, {_fmt(part['high'])}]"
            verdict = part["verdict"] + (f" ({part['note']})" if part["note"] else "")
            cells += [_fmt(part["mean_diff"]), interval, verdict]
        cells += [str(result["in_task"][s]["n_probes"]), str(result["skipped_groups"][s])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Relative influence by eval task (strategy mean − `{base}` mean)",
        "",
        "| strategy | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for s in result["strategies"]:
        lines.append("| " + " | ".join([s] + [_fmt(result["relative"][s][t]) for t in tasks]) + " |")
    return "\n".join(lines) + "\n"


def _heatmap_png(result: dict[str, Any]) -> bytes:
    """Render strategies × eval tasks relative influence as a PNG (diverging colours centred on 0)."""
    plt = pyplot()

    strategies, tasks = result["strategies"], result["eval_tasks"]
    values = np.array(
        [[np.nan if result["relative"][s][t] is None else result["relative"][s][t] for t in tasks] for s in strategies],
        dtype=float,
    )
    finite = values[np.isfinite(values)]
    vmax = float(np.abs(finite).max()) if finite.size else 0.0
    vmax = vmax if vmax > 0 else 1e-6
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(tasks) + 2.5), max(2.8, 0.7 * len(strategies) + 1.8)))
    with closing(fig):
        image = ax.imshow(values, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(tasks)), labels=tasks, rotation=35, ha="right")
        ax.set_yticks(range(len(strategies)), labels=strategies)
        for i in range(len(strategies)):
            for j in range(len(tasks)):
                v = values[i, j]
                text = "n/a" if not np.isfinite(v) else f"{v:+.3f}"
                colour = "white" if np.isfinite(v) and abs(v) > 0.6 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
        fig.colorbar(image, ax=ax, label="relative influence (Δ mean cosine)")
        ax.set_title(f"Relative influence vs baseline '{result['baseline']}'")
        return png(fig, dpi=120)


def write_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.json and heatmap.png for a ``run_study`` result; returns their paths by kind."""
    missing = [k for k in ("baseline", "strategies", "eval_tasks", "relative", "verdicts") if k not in result]
    if missing:
        raise InputError(f"study result is missing key(s) {', '.join(missing)}; pass the dict run_study returned")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"report directory {out} is a file; pass a directory path")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json", "heatmap": out / "heatmap.png"}
    write_bytes_atomic(paths["json"], (json.dumps(result, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())
    write_bytes_atomic(paths["markdown"], _markdown(result).encode())
    write_bytes_atomic(paths["heatmap"], _heatmap_png(result))
    return paths
