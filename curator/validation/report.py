"""Predicted against measured: Spearman and top-1 per predictor, and the validation report.

The measured gain of a strategy is what fine-tuning on it bought over the base model on the
eval set: base eval loss − fine-tuned eval loss (``loss``), or fine-tuned − base accuracy
(``accuracy``), averaged over seeds. Higher is better for both.

For each predictor, over the strategies that have both a predicted score and a measured gain:

- Spearman's rho between the predicted and the measured order, on average ranks (ties share
  their mean rank), oriented so +1 means the predictor orders strategies exactly as training
  did. With fewer than 3 strategies it is not reported (2 points always give ±1), nor when either
  side gives every strategy the same score;
- top-1: the predictor's best strategy (all of them when several tie) against the measured best.
  It is a hit when they share a strategy; ``tied`` says the predictor's top was a tie. When the
  predictor ties every strategy it picked nothing, and the hit is None (n/a).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from curator.io.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from curator.io.figures import closing, png, pyplot
from curator.io.stats import finite_or_none

MIN_SPEARMAN = 3
# Display order: influence first, then the selection metrics in their report order.
PREDICTOR_ORDER = ("influence in-task", "influence cross-task", "alignment", "embedding", "hidden", "rouge-l", "token-f1", "answer", "sappl", "perplexity")


def ordered(names: Any) -> list[str]:
    """Predictor names in display order (unknown names last, by name): report.json stores them sorted."""
    rank = {n: i for i, n in enumerate(PREDICTOR_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def average_ranks(values: Mapping[str, float], higher_is_better: bool = True) -> dict[str, float]:
    """Rank 1 = best; tied values share the mean of the ranks they span."""
    sign = -1.0 if higher_is_better else 1.0
    order = sorted(values, key=lambda s: sign * values[s])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(predicted: Mapping[str, float], measured: Mapping[str, float], higher_is_better: bool = True) -> tuple[float | None, str | None]:
    """(rho, None), or (None, why it is undefined); measured gains are higher-is-better."""
    common = sorted(s for s in predicted if s in measured and predicted[s] is not None and measured[s] is not None)
    if len(common) < MIN_SPEARMAN:
        return None, f"needs at least {MIN_SPEARMAN} strategies with both a prediction and a measurement (has {len(common)})"
    rp = average_ranks({s: predicted[s] for s in common}, higher_is_better)
    rm = average_ranks({s: measured[s] for s in common}, True)
    a = np.array([rp[s] for s in common])
    b = np.array([rm[s] for s in common])
    if np.all(a == a[0]):
        return None, "the predictor gives every strategy the same score"
    if np.all(b == b[0]):
        return None, "every strategy measured the same gain"
    return float(np.corrcoef(a, b)[0, 1]), None


def best(values: Mapping[str, float | None], higher_is_better: bool = True) -> list[str]:
    """The strategies tied for the best value (sorted); empty when none has a value."""
    have = {s: v for s, v in values.items() if v is not None}
    if not have:
        return []
    top = max(have.values()) if higher_is_better else min(have.values())
    return sorted(s for s, v in have.items() if v == top)


def top1(predicted: Mapping[str, float | None], measured: Mapping[str, float | None], higher_is_better: bool = True) -> dict[str, Any]:
    """The predictor's best vs the measured best (both may be ties), over shared strategies."""
    common = [s for s in predicted if predicted[s] is not None and measured.get(s) is not None]
    pred = best({s: predicted[s] for s in common}, higher_is_better)
    meas = best({s: measured[s] for s in common}, True)
    hit = bool(set(pred) & set(meas)) if pred and meas else None
    if len(common) > 1 and len(pred) == len(common):  # every strategy tied: the predictor picked nothing
        hit = None
    return {"predicted": pred, "measured": meas, "hit": hit, "tied": len(pred) > 1}


def ranking(values: Mapping[str, float | None], higher_is_better: bool = True) -> list[str]:
    """Strategies with a value, best first; ties by name."""
    sign = -1.0 if higher_is_better else 1.0
    return sorted((s for s in values if values[s] is not None), key=lambda s: (sign * values[s], s))  # type: ignore[operator]


def compare(predictors: Mapping[str, Mapping[str, Any]], gains: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Per predictor: its ranking, and Spearman + top-1 against each measure's mean gains."""
    out: dict[str, dict[str, Any]] = {}
    for name, p in predictors.items():
        higher = p["direction"] == "higher"
        values = p["values"]
        entry: dict[str, Any] = {"source": p["source"], "direction": p["direction"], "meaning": p["meaning"], "values": dict(values), "ranking": ranking(values, higher), "against": {}}
        for measure, measured in gains.items():
            if not any(v is not None for v in measured.values()):
                continue
            if not entry["ranking"]:
                entry["against"][measure] = {"spearman": None, "note": "the predictor has no values", "top1": top1({}, measured)}
                continue
            rho, note = spearman({s: v for s, v in values.items() if v is not None}, measured, higher)
            entry["against"][measure] = {"spearman": finite_or_none(rho), "note": note, "top1": top1(values, measured, higher)}
        out[name] = entry
    return out


# --------------------------------------------------------------------------- rendering


def _pm(entry: Mapping[str, Any] | None, fmt: str = "{:+.4f}") -> str:
    if entry is None or entry.get("mean") is None:
        return "n/a"
    std = entry.get("std")
    return fmt.format(entry["mean"]) + ("" if std is None else " ± " + fmt.format(std).lstrip("+"))


def markdown(report: dict[str, Any]) -> str:
    """The human report: budget, measured table and ranking, then each predictor against it."""
    b, measure = report["budget"], report["measure"]
    strategies = report["measured_ranking"] or report["strategies"]
    lines = [
        "# Validation: predicted strategy rankings against fine-tuning runs",
        "",
        "## How to read this",
        "",
        "Each strategy's candidates were used to LoRA-fine-tune the target model with the same budget, then the "
        "model was evaluated on the eval set. The measured gain is the improvement over the un-fine-tuned model: "
        "base eval loss − fine-tuned eval loss (`loss`, the mean response-token NLL per eval item), and fine-tuned − "
        f"base accuracy (`accuracy`, greedy generation, final answer extracted). The measured ranking uses **{measure}**. "
        "Spearman's rho compares each predictor's order of strategies with the measured order (+1: the same order, "
        "−1: reversed; average ranks for ties); top-1 says whether the predictor's best strategy was the measured best.",
        "",
        "## Budget",
        "",
        f"- model: `{report['model']['spec']}` (fingerprint {report['model']['fingerprint']})",
        f"- per strategy and seed: {b['examples']} examples, {b['steps']} steps of batch {b['batch_size']} "
        f"({b['steps'] * b['batch_size']} examples seen), AdamW lr {b['lr']:g} (linear warm-up {b['warmup_ratio']:g}, then decay), "
        f"LoRA r={b['lora']['r']} alpha={b['lora']['alpha']} on {', '.join(b['lora']['target_modules'])}, max length {b['max_length']}",
        f"- seeds: {', '.join(str(s) for s in report['seeds'])} (data sample, data order and LoRA initialisation)",
        f"- eval: {report['eval']['n']} items; accuracy on {report['base']['n_gradable']} items with an extractable answer"
        + ("" if report["evaluation"]["accuracy"] else " (accuracy not measured)"),
        "",
        "## Measured",
        "",
        f"Base model: eval loss {report['base']['loss']:.4f}" + ("" if report["base"]["accuracy"] is None else f", accuracy {report['base']['accuracy']:.3f}") + ".",
        "",
        "| strategy | eval loss | loss gain ↑ | accuracy | accuracy gain ↑ | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for s in strategies:
        m = report["measured"][s]
        lines.append(f"| {s} | {_pm(m['loss'], '{:.4f}')} | {_pm(m['loss_gain'])} | {_pm(m['accuracy'], '{:.3f}')} | {_pm(m['accuracy_gain'], '{:+.3f}')} | {m['n_seeds']} |")
    lines += ["", f"Measured ranking ({measure} gain, best first): " + (" > ".join(report["measured_ranking"]) or "none")]
    for other, order in report.get("secondary_rankings", {}).items():
        lines.append(f"By {other} gain (secondary): " + (" > ".join(order) or "none"))
    lines.append("")
    lines += [f"- {n}" for n in report["measured_notes"]]
    lines += ["", "## Predictors", "", f"| predictor | predicted ranking (best first) | Spearman vs {measure} | top-1 | hit |" + ("" if len(report["measures"]) < 2 else " Spearman vs " + " / ".join(m for m in report["measures"] if m != measure) + " |"), "|---|---|---|---|---|" + ("" if len(report["measures"]) < 2 else "---|")]
    for name in ordered(report["predictors"]):
        p = report["predictors"][name]
        a = p["against"].get(measure, {})
        rho = "n/a" if a.get("spearman") is None else f"{a['spearman']:+.2f}"
        t = a.get("top1", {})
        pick = "/".join(t.get("predicted", [])) or "n/a"
        hit = "n/a" if t.get("hit") is None else ("yes" if t["hit"] else "no") + (" (tie)" if t.get("tied") else "")
        vals = [v for v in p["values"].values() if v is not None]
        order = "all tied" if len(vals) > 1 and len(set(vals)) == 1 else " > ".join(p["ranking"]) or "no values"
        row = f"| {name} {'↑' if p['direction'] == 'higher' else '↓'} | {order} | {rho} | {pick} | {hit} |"
        for other in (m for m in report["measures"] if m != measure):
            o = p["against"].get(other, {})
            row += " n/a |" if o.get("spearman") is None else f" {o['spearman']:+.2f} |"
        lines.append(row)
    notes = [f"- {name}: Spearman n/a: {p['against'][measure]['note']}" for name, p in report["predictors"].items() if p["against"].get(measure, {}).get("note")]
    if notes:
        lines += ["", "Undefined correlations:", ""] + sorted(set(notes))
    lines += ["", "## Where the predictions failed", ""]
    lines += [f"- {f}" for f in report["failures"]] or ["- nowhere: every predictor with values picked the measured best and ordered the strategies positively"]
    lines += ["", "## Predictor sources", ""] + [f"- {n}: {report['predictors'][n]['meaning']} ({report['predictors'][n]['source']})" for n in ordered(report["predictors"])]
    return "\n".join(lines) + "\n"


def plot_png(report: dict[str, Any]) -> bytes:
    """One panel per predictor: predicted score (x) against measured gain (y, mean ± std over seeds)."""
    plt = pyplot()

    measure = report["measure"]
    names = ordered(report["predictors"]) or ["(no predictor)"]
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.2 * nrows), squeeze=False)
    colours = plt.get_cmap("tab10")
    strategies = report["strategies"]
    with closing(fig):
        for k, ax in enumerate(axes.flat):
            if k >= len(names) or names[k] not in report["predictors"]:
                ax.set_visible(k < len(names))
                continue
            p = report["predictors"][names[k]]
            for i, s in enumerate(strategies):
                x = p["values"].get(s)
                g = report["measured"][s][f"{measure}_gain"]
                if x is None or g["mean"] is None:
                    continue
                ax.errorbar([x], [g["mean"]], yerr=[g["std"] or 0.0], fmt="o", color=colours(i % 10), capsize=3)
                ax.annotate(s, (x, g["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
            a = p["against"].get(measure, {})
            rho = "ρ n/a" if a.get("spearman") is None else f"ρ={a['spearman']:+.2f}"
            hit = a.get("top1", {}).get("hit")
            ax.set_title(f"{names[k]}: {rho}, top-1 {'n/a' if hit is None else ('hit' if hit else 'miss')}", fontsize=9)
            xs = [v for v in p["values"].values() if v is not None]
            if xs and min(xs) > 0 and max(xs) / min(xs) > 50:
                ax.set_xscale("log")
            if p["direction"] == "lower":  # better to the right in every panel: agreement slopes upward
                ax.invert_xaxis()
            ax.set_xlabel(f"predicted ({p['direction']} is better" + ("; axis reversed)" if p["direction"] == "lower" else ")"), fontsize=8)
            ax.set_ylabel(f"measured {measure} gain", fontsize=8)
            ax.axhline(0.0, color="grey", linewidth=0.6)
            ax.tick_params(labelsize=7)
        n_seeds = len(report["seeds"])
        fig.suptitle(f"Predicted score vs measured {measure} gain (" + (f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed") + "); better is right and up", fontsize=10)
        return png(fig, dpi=110)


def write_validation_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and validate.png into ``out_dir``; return their paths."""
    out = Path(out_dir)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "validate.png"}
    write_json_atomic(paths["json"], report)
    write_text_atomic(paths["markdown"], markdown(report))
    write_bytes_atomic(paths["plot"], plot_png(report))
    return paths
