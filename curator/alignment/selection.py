"""Strategy selection without training: which strategy's candidates fit the target model best?

Following "Efficient Response Generation Method Selection..." (SPPL), a strategy whose candidates
sit close to what the target model would write itself (high alignment, low perplexity) is predicted
to fine-tune best. The input is the scores table written by ``curator align``: one row per
candidate with ``id``, ``strategy``, ``task``, ``group`` and optional metric columns.

Every metric is summarised per strategy by its mean over candidates (NaN excluded) with a seeded
percentile-bootstrap interval. The bootstrap resamples *groups* (prompts), not single candidates:
candidates answering the same prompt share its difficulty, so treating them as independent would
make the intervals too narrow. A candidate without a group is its own cluster. The resampled
statistic is the pooled candidate mean of the drawn groups, the same estimator as the point mean.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curator.io.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from curator.errors import InputError
from curator.io.figures import closing, png, pyplot
from curator.alignment.metrics import HIGHER_IS_BETTER, LOWER_IS_BETTER
from curator.io.stats import finite_or_none

FORMAT_VERSION = 1
# Display order, and the fallback order for the deciding metric: combined alignment, the single
# alignment metrics, then SAPPL (a better predictor than plain perplexity in the SPPL paper).
METRIC_ORDER = ("alignment", "embedding", "hidden", "rouge-l", "token-f1", "answer", "sappl", "perplexity")
METRIC_MEANING = {
    "alignment": "combined z-scored alignment over the alignment metrics",
    "embedding": "sentence-embedding cosine to the model's own samples",
    "hidden": "cosine of the target model's hidden states to its own samples",
    "rouge-l": "ROUGE-L overlap with the model's own samples",
    "token-f1": "token-level F1 overlap with the model's own samples",
    "answer": "agreement of the final answer with the model's own answers",
    "perplexity": "the target model's perplexity of the candidate response",
    "sappl": "self-aligned perplexity: perplexity after in-context examples of the model's own answers to other prompts",
}
NEEDS_TWO = "strategy comparison needs ≥ 2 strategies"


def direction(metric: str) -> str:
    """'higher' or 'lower': which way is better for ``metric``."""
    return "lower" if metric in LOWER_IS_BETTER else "higher"


def _validate(table: pd.DataFrame) -> list[str]:
    """Check the scores table and return the metric columns present, in display order."""
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"scores table: expected a pandas DataFrame, got {type(table).__name__}; pass the table `curator align` wrote")
    if len(table) == 0:
        raise InputError("scores table is empty: run `curator align` on some candidates first")
    if "strategy" not in table.columns:
        raise InputError("scores table has no 'strategy' column: every candidate needs the strategy that generated it; pass the table `curator align` wrote")
    if table["strategy"].isna().any():
        row = int(np.flatnonzero(table["strategy"].isna().to_numpy())[0])
        raise InputError(f"scores table row {row}: column 'strategy' is empty; every candidate needs one")
    metrics = [m for m in METRIC_ORDER if m in table.columns]
    if not metrics:
        raise InputError(
            f"scores table has no metric column (columns: {', '.join(map(str, table.columns))}); "
            f"it needs at least one of {', '.join(METRIC_ORDER)}: run `curator align` to compute them"
        )
    for m in metrics:
        col = table[m]
        if pd.api.types.is_bool_dtype(col):
            raise InputError(f"scores table column '{m}' holds booleans; it must hold numbers (NaN where missing)")
        coerced = pd.to_numeric(col, errors="coerce")
        bad = coerced.isna() & col.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"scores table row {row}: column '{m}' holds {col.iloc[row]!r}, not a number; use a float or leave it empty")
    return metrics


def _check_options(n_boot: Any, confidence: Any) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise InputError(f"n_boot must be a positive integer, got {n_boot!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < float(confidence) < 1.0:
        raise InputError(f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")


def _clusters(table: pd.DataFrame) -> np.ndarray:
    """A cluster key per row: its group, or a unique key for rows without a group."""
    if "group" not in table.columns:
        return np.array([f"\0row{i}" for i in range(len(table))], dtype=object)
    return np.array([f"\0row{i}" if pd.isna(g) else f"g:{g}" for i, g in enumerate(table["group"])], dtype=object)


def _summarise(values: np.ndarray, clusters: np.ndarray, n_boot: int, seed: int, confidence: float) -> dict[str, Any]:
    """Mean, count and group-bootstrap interval of one strategy's values on one metric.

    Each call starts a fresh ``default_rng(seed)``, so an interval does not depend on which other
    strategies or metrics are in the table.
    """
    keep = np.isfinite(values)
    values, clusters = values[keep], clusters[keep]
    entry: dict[str, Any] = {"mean": None, "n": int(values.size), "n_groups": 0, "low": None, "high": None}
    if values.size == 0:
        return entry
    keys, inverse = np.unique(clusters, return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse).astype(float)
    entry["mean"] = finite_or_none(values.mean())
    entry["n_groups"] = int(keys.size)
    if keys.size < 2:
        return entry
    idx = np.random.default_rng(seed).integers(0, keys.size, size=(n_boot, keys.size))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    entry["low"], entry["high"] = finite_or_none(low), finite_or_none(high)
    return entry


def _ranking(stats: dict[str, dict[str, Any]], metric: str) -> list[str]:
    """Strategies with a mean on ``metric``, best first; ties broken by strategy name."""
    sign = -1.0 if direction(metric) == "higher" else 1.0
    have = [s for s in stats if stats[s][metric]["mean"] is not None]
    return sorted(have, key=lambda s: (sign * stats[s][metric]["mean"], s))


def _spearman(stats: dict[str, dict[str, Any]], metric: str, primary: str) -> float | None:
    """Spearman correlation of two metrics' strategy orderings (+1 = same order of goodness)."""
    common = [s for s in stats if stats[s][metric]["mean"] is not None and stats[s][primary]["mean"] is not None]
    if len(common) < 2:
        return None
    good = {}
    for m in (metric, primary):
        sign = 1.0 if direction(m) == "higher" else -1.0
        good[m] = pd.Series([sign * stats[s][m]["mean"] for s in common]).rank(method="average")
    if good[metric].nunique() < 2 or good[primary].nunique() < 2:
        return None
    return finite_or_none(np.corrcoef(good[metric].to_numpy(), good[primary].to_numpy())[0, 1])


def _pick_primary(primary: str, metrics: list[str], rankings: dict[str, list[str]]) -> tuple[str | None, str]:
    """The metric that decides, and a sentence saying why that one."""
    if primary not in METRIC_ORDER:
        raise InputError(f"primary metric {primary!r} is unknown: use one of {', '.join(METRIC_ORDER)}")
    usable = [m for m in metrics if rankings[m]]
    if primary in usable:
        if primary == "alignment":
            return primary, "the combined alignment score is present, so it decides (the default)"
        return primary, f"{primary} was asked for as the deciding metric"
    if primary != "alignment":
        raise InputError(
            f"primary metric {primary!r} has no values in the scores table (metrics with values: "
            f"{', '.join(usable) or 'none'}); pick one of those or compute {primary} with `curator align`"
        )
    if not usable:
        return None, "no metric has any value, so nothing decides"
    return usable[0], f"'alignment' is absent or empty, so the first metric with values ({usable[0]}) decides"


def _recommend(stats: dict[str, dict[str, Any]], metric: str, ranking: list[str]) -> dict[str, Any]:
    """The top strategy on ``metric`` and whether its interval separates it from the runner-up."""
    best = ranking[0]
    rec: dict[str, Any] = {"strategy": best, "metric": metric, "runner_up": None, "confidence": "tentative"}
    if len(ranking) < 2:
        rec["note"] = f"{best} is the only strategy with {metric} values"
        return rec
    second = ranking[1]
    rec["runner_up"] = second
    a, b = stats[best][metric], stats[second][metric]
    if None in (a["low"], a["high"], b["low"], b["high"]):
        rec["note"] = f"{best} leads {second} on {metric}, but an interval is missing (fewer than 2 groups)"
    elif a["low"] <= b["high"] and b["low"] <= a["high"]:
        rec["note"] = f"{best} leads {second} on {metric}, but their intervals overlap"
    else:
        rec["confidence"] = "clear"
        rec["note"] = f"{best} beats {second} on {metric}: their intervals do not overlap"
    return rec


def select_strategy(
    table: pd.DataFrame, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95, primary: str = "alignment"
) -> dict[str, Any]:
    """Summarise every metric per strategy, rank strategies, and recommend one.

    ``primary`` names the deciding metric. With the default ``alignment`` absent or empty, the
    first metric with values in ``METRIC_ORDER`` decides instead; any other ``primary`` must have
    values. Returns a JSON-serialisable dict (plain floats, None for missing values): per-strategy
    ``stats`` with intervals, ``rankings`` per metric, the ``primary`` metric and ``recommended``.
    """
    metrics = _validate(table)
    _check_options(n_boot, confidence)
    strategy_col = table["strategy"].astype(str).to_numpy()
    strategies = sorted(set(strategy_col))
    clusters = _clusters(table)
    values = {m: pd.to_numeric(table[m], errors="coerce").to_numpy(dtype=float) for m in metrics}
    stats = {
        s: {m: _summarise(values[m][strategy_col == s], clusters[strategy_col == s], int(n_boot), int(seed), float(confidence)) for m in metrics}
        for s in strategies
    }
    rankings = {m: _ranking(stats, m) for m in metrics}
    decider, reason = _pick_primary(primary, metrics, rankings)
    notes: list[str] = []
    recommendation: dict[str, Any] | None = None
    disagreements: list[str] = []
    spearman: dict[str, float | None] = {}
    if len(strategies) < 2:
        notes.append(NEEDS_TWO)
    elif decider is None:
        notes.append("no metric has any value: nothing to rank strategies by")
    else:
        recommendation = _recommend(stats, decider, rankings[decider])
        top = rankings[decider][0]
        for m in metrics:
            if m == decider or not rankings[m]:
                continue
            spearman[m] = _spearman(stats, m, decider)
            if rankings[m][0] != top:
                disagreements.append(f"{m} ranks {rankings[m][0]} first, {decider} ranks {top} first")
    for m in metrics:
        if not rankings[m]:
            notes.append(f"{m} has no values: left out of the rankings")
    return {
        "format_version": FORMAT_VERSION,
        "strategies": strategies,
        "metrics": metrics,
        "directions": {m: direction(m) for m in metrics},
        "stats": stats,
        "rankings": rankings,
        "primary": decider,
        "primary_reason": reason,
        "recommended": recommendation["strategy"] if recommendation else None,
        "recommendation": recommendation,
        "disagreements": disagreements,
        "spearman": spearman,
        "notes": notes,
        "resample": "group",
        "n_boot": int(n_boot),
        "seed": int(seed),
        "confidence": float(confidence),
        "n_candidates": int(len(table)),
        "n_groups": int(np.unique(clusters).size),
    }


def _cell(entry: dict[str, Any]) -> str:
    """'mean [low, high]', or what is missing."""
    if entry["mean"] is None:
        return "n/a"
    if entry["low"] is None:
        return f"{entry['mean']:.4g} (n={entry['n']}, no interval)"
    return f"{entry['mean']:.4g} [{entry['low']:.4g}, {entry['high']:.4g}]"


def _markdown(result: dict[str, Any]) -> str:
    """The human report: how to read it, recommendation, table, rankings, disagreements."""
    metrics, strategies = result["metrics"], result["strategies"]
    pct = f"{100 * result['confidence']:g}%"
    arrow = {m: "↑" if result["directions"][m] == "higher" else "↓" for m in metrics}
    lines = [
        "# Strategy selection: which strategy's candidates fit the target model best",
        "",
        "## How to read this",
        "",
        "Each metric compares a candidate with what the target model writes on its own. Alignment "
        "metrics (↑, higher is better) measure how close a candidate is to the model's own samples; "
        "perplexity metrics (↓, lower is better) measure how surprised the model is by the candidate. "
        "A strategy whose candidates fit the model well is predicted to fine-tune it best, with no "
        f"training needed. Cells are the mean over candidates with a {pct} percentile bootstrap "
        f"interval that resamples prompts (groups), {result['n_boot']} resamples, seed {result['seed']}. "
        "A recommendation is *clear* only when its interval does not overlap the runner-up's.",
        "",
    ]
    lines += [f"- **{m}** ({arrow[m]}): {METRIC_MEANING[m]}" for m in metrics]
    lines += ["", f"{result['n_candidates']} candidates, {result['n_groups']} groups, {len(strategies)} strategies.", "", "## Recommendation", ""]
    rec = result["recommendation"]
    if rec is None:
        lines.append("No recommendation: " + "; ".join(result["notes"] or ["nothing to compare"]) + ".")
    else:
        lines.append(f"**{rec['strategy']}** ({rec['confidence']}), decided by **{rec['metric']}**: {rec['note']}.")
        lines.append(f"Why {rec['metric']}: {result['primary_reason']}.")
    lines += ["", f"## Means and {pct} intervals", "", "| strategy | " + " | ".join(f"{m} {arrow[m]}" for m in metrics) + " |"]
    lines.append("|---|" + "---|" * len(metrics))
    for s in strategies:
        lines.append("| " + " | ".join([s] + [_cell(result["stats"][s][m]) for m in metrics]) + " |")
    lines += ["", "## Rankings (best first)", ""]
    for m in metrics:
        order = " > ".join(result["rankings"][m]) or "no values"
        rho = result["spearman"].get(m)
        agree = "" if rho is None else f" (Spearman vs {result['primary']}: {rho:+.2f})"
        lines.append(f"- {m} {arrow[m]}: {order}{agree}")
    lines += ["", "## Disagreements between metrics", ""]
    lines += [f"- {d}" for d in result["disagreements"]] or ["- none: every metric ranks the same strategy first"]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def _bars_png(result: dict[str, Any]) -> bytes:
    """One panel per metric: a bar per strategy with its bootstrap interval as the error bar."""
    plt = pyplot()

    metrics, strategies = result["metrics"], result["strategies"]
    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    width = max(3.0, 0.55 * len(strategies) + 1.2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 3.2 * nrows), squeeze=False)
    colours = plt.get_cmap("tab10")
    with closing(fig):
        for k, ax in enumerate(axes.flat):
            if k >= len(metrics):
                ax.set_visible(False)
                continue
            m = metrics[k]
            entries = [result["stats"][s][m] for s in strategies]
            means = np.array([np.nan if e["mean"] is None else e["mean"] for e in entries], dtype=float)
            err = np.array(
                [[0.0, 0.0] if e["low"] is None else [e["mean"] - e["low"], e["high"] - e["mean"]] for e in entries],
                dtype=float,
            ).T
            x = np.arange(len(strategies))
            ax.bar(x, np.nan_to_num(means), yerr=err, capsize=3, color=[colours(i % 10) for i in x],
                   edgecolor=["black" if s == result["recommended"] else "none" for s in strategies], linewidth=1.5)
            for i in np.flatnonzero(~np.isfinite(means)):
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
            better = "higher" if result["directions"][m] == "higher" else "LOWER"
            ax.set_title(f"{m} ({better} is better)", fontsize=10)
            ax.set_xticks(x, labels=strategies, rotation=30, ha="right", fontsize=8)
            ax.tick_params(axis="y", labelsize=8)
        rec = result["recommended"]
        pct = f"{100 * result['confidence']:g}%"
        fig.suptitle(f"Strategies by metric (mean, {pct} interval)" + (f"; recommended: {rec}" if rec else ""), fontsize=11)
        return png(fig, dpi=110)


def write_selection_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.json and strategies.png for a ``select_strategy`` result; return their paths."""
    needed = ("strategies", "metrics", "directions", "stats", "rankings", "recommendation", "disagreements", "notes")
    missing = [k for k in needed if k not in result]
    if missing:
        raise InputError(f"selection result is missing key(s) {', '.join(missing)}; pass the dict select_strategy returned")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"report directory {out} is a file; pass a directory path")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json", "plot": out / "strategies.png"}
    write_json_atomic(paths["json"], result)
    write_text_atomic(paths["markdown"], _markdown(result))
    write_bytes_atomic(paths["plot"], _bars_png(result))
    return paths
