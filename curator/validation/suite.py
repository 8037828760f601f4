"""`curator validate --suite`: one budget over several task families, each predictor judged across them.

A suite folder holds one folder per task family, each with ``candidates.jsonl`` and ``eval.jsonl``
(``scripts/build_strategy_suite.py`` builds one). Every family goes through ``run_validate`` with
the same config and one loaded model, into ``OUT/<family>/``, so each family resumes per strategy
and seed exactly as a plain validate does. The suite report then sets the families side by side,
in the papers' shape: per family, each predictor's Spearman and top-1 against the measured ranking;
per predictor, the mean Spearman over the families where it is defined and the top-1 hit rate; and
an exact two-sided sign test of ``alignment`` against ``perplexity`` across families, the selection
paper's claim (count the families where alignment's Spearman beats perplexity's; ties dropped).

Layout of ``OUT``: ``validate-suite.json`` (marks the folder), ``<family>/`` (a validate folder
each), ``suite.json``, ``suite.md`` and ``suite.png`` (a panel per family).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from curator import __version__
from curator.config import ProgressFn, no_progress
from curator.errors import InputError
from curator.io.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from curator.io.data import load_candidates, load_eval
from curator.io.figures import closing, png, pyplot
from curator.io.stats import finite_or_none
from curator.model.models import LoadedModel, load_model
from curator.validation.report import ordered
from curator.validation.run import ValidateConfig, ValidateResult, check_out, read_marker, run_validate

FORMAT_VERSION = 1
MARK = "validate-suite.json"
CANDIDATES = "candidates.jsonl"
EVAL = "eval.jsonl"
SIGN_TEST = ("alignment", "perplexity")


@dataclass
class SuiteResult:
    out: Path
    families: dict[str, ValidateResult]
    summary: dict[str, Any]
    paths: dict[str, Path]


def find_families(suite: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, candidates, eval) per family folder of ``suite``, by name; every non-hidden subfolder is a family."""
    root = Path(suite)
    if not root.is_dir():
        raise InputError(f"--suite {root}: no such folder: pass a folder holding one folder per task family, each with {CANDIDATES} and {EVAL}")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for name in (CANDIDATES, EVAL):
            if not (d / name).is_file():
                fix = "make it with `curator generate` from the family's prompts.jsonl (scripts/build_strategy_suite.py --generate does it for every family)" if name == CANDIDATES else "add the family's held-out eval rows (prompt, response, task)"
                raise InputError(f"{d / name}: missing: every family folder of a suite needs {CANDIDATES} and {EVAL}; {fix}, or move {d} out of {root}")
        out.append((d.name, d / CANDIDATES, d / EVAL))
    if not out:
        raise InputError(f"--suite {root}: no family folders: put one folder per task family in it, each holding {CANDIDATES} and {EVAL} (scripts/build_strategy_suite.py builds one)")
    return out


def sign_test_p(wins: int, losses: int) -> float | None:
    """Exact two-sided binomial sign test at p = 1/2 (ties already dropped); None when n = 0."""
    n = wins + losses
    if n == 0:
        return None
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def sign_test(rhos_a: Mapping[str, float | None], rhos_b: Mapping[str, float | None], a: str = SIGN_TEST[0], b: str = SIGN_TEST[1]) -> dict[str, Any]:
    """Per family, does predictor ``a`` order strategies better than ``b`` (higher Spearman)?"""
    outcome: dict[str, str] = {}
    for fam in rhos_a.keys() | rhos_b.keys():
        x, y = rhos_a.get(fam), rhos_b.get(fam)
        outcome[fam] = "n/a" if x is None or y is None else "win" if x > y else "loss" if x < y else "tie"
    wins, losses = sum(v == "win" for v in outcome.values()), sum(v == "loss" for v in outcome.values())
    return {"a": a, "b": b, "wins": wins, "losses": losses, "ties": sum(v == "tie" for v in outcome.values()), "n": wins + losses,
            "p_value": sign_test_p(wins, losses), "per_family": dict(sorted(outcome.items())),
            "undefined": sorted(f for f, v in outcome.items() if v == "n/a")}


def summarise(reports: Mapping[str, Mapping[str, Any]], measure: str) -> dict[str, Any]:
    """The cross-family table from each family's validate report (``report.json``'s dict)."""
    families: dict[str, Any] = {}
    names: set[str] = set()
    for fam, rep in reports.items():
        preds = {}
        for name, p in rep["predictors"].items():
            a = p["against"].get(measure, {})
            preds[name] = {"spearman": a.get("spearman"), "note": a.get("note"), "top1": a.get("top1", {"predicted": [], "measured": [], "hit": None, "tied": False}), "ranking": p["ranking"]}
        names |= preds.keys()
        families[fam] = {"strategies": rep["strategies"], "measured_ranking": rep["measured_ranking"],
                         "measured_gain": {s: rep["measured"][s][f"{measure}_gain"]["mean"] for s in rep["strategies"]},
                         "n_eval": rep["eval"]["n"], "examples": rep["budget"]["examples"], "notes": rep["measured_notes"], "predictors": preds}
    predictors: dict[str, Any] = {}
    for name in ordered(names):
        rho = {f: families[f]["predictors"].get(name, {}).get("spearman") for f in families}
        hits = [families[f]["predictors"][name]["top1"]["hit"] for f in families if name in families[f]["predictors"]]
        have = [v for v in rho.values() if v is not None]
        judged = [h for h in hits if h is not None]
        predictors[name] = {"spearman": rho, "mean_spearman": finite_or_none(np.mean(have)) if have else None, "n": len(have),
                            "top1_hits": sum(judged), "top1_n": len(judged), "top1_rate": sum(judged) / len(judged) if judged else None,
                            "negative": sorted(f for f, v in rho.items() if v is not None and v < 0)}
    a, b = SIGN_TEST
    test = sign_test(predictors.get(a, {}).get("spearman", {f: None for f in families}), predictors.get(b, {}).get("spearman", {f: None for f in families}))
    return {"families": families, "predictors": predictors, "sign_test": test}


def _cell(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "—"
    rho = "n/a" if entry["spearman"] is None else f"{entry['spearman']:+.2f}"
    hit = entry["top1"]["hit"]
    return rho if hit is None else f"{rho} ({'hit' if hit else 'miss'})"


def markdown(s: dict[str, Any]) -> str:
    """The human report: the budget, each family's measured ranking, the predictor table, the sign test."""
    fams, b, measure = list(s["families"]), s["budget"], s["measure"]
    t = s["sign_test"]
    lines = [
        "# Strategy suite: predicted strategy rankings against fine-tuning, across task families",
        "",
        f"Each family was run through `curator validate` with the same budget; the measured ranking uses **{measure}** gain over the base model. "
        "Each cell gives the predictor's Spearman rho against the measured ranking (+1 = the same order, −1 = reversed; n/a when undefined) "
        "and whether its top-1 strategy was the measured best. The mean is over the families where rho is defined; the top-1 rate over the "
        "families where the predictor picked a strategy.",
        "",
        "## Budget",
        "",
        f"- model: `{s['model']['spec']}` (fingerprint {s['model']['fingerprint']})",
        f"- per strategy and seed: {b['steps']} steps of batch {b['batch_size']}, AdamW lr {b['lr']:g}, LoRA r={b['lora']['r']} alpha={b['lora']['alpha']} "
        f"on {', '.join(b['lora']['target_modules'])}, max length {b['max_length']}; examples per family: "
        + ", ".join(f"{f} {s['families'][f]['examples']}" for f in fams),
        f"- seeds: {', '.join(str(x) for x in s['seeds'])}; eval items: " + ", ".join(f"{f} {s['families'][f]['n_eval']}" for f in fams),
        f"- this invocation: {s['seconds_this_run']:.0f} s wall clock; runs trained / reused: " + ", ".join(f"{f} {s['families'][f]['trained']}/{s['families'][f]['reused']}" for f in fams),
        "",
        "## Measured rankings",
        "",
        f"| family | eval items | measured ranking ({measure} gain, best first) |",
        "|---|---|---|",
    ]
    lines += [f"| {f} | {s['families'][f]['n_eval']} | {' > '.join(s['families'][f]['measured_ranking']) or 'none'} |" for f in fams]
    notes = [f"- {f}: {n}" for f in fams for n in s["families"][f]["notes"]]
    lines += ([""] + notes if notes else []) + ["", "## Predictors across families", ""]
    lines += ["| predictor | " + " | ".join(fams) + " | mean Spearman | top-1 hits |", "|---|" + "---|" * (len(fams) + 2)]
    for name, p in s["predictors"].items():
        mean = "n/a" if p["mean_spearman"] is None else f"{p['mean_spearman']:+.2f} (n={p['n']})"
        rate = "n/a" if p["top1_rate"] is None else f"{p['top1_hits']}/{p['top1_n']}"
        lines.append(f"| {name} | " + " | ".join(_cell(s["families"][f]["predictors"].get(name)) for f in fams) + f" | {mean} | {rate} |")
    p_text = "n/a (no family where both are defined)" if t["p_value"] is None else f"{t['p_value']:.4g}"
    lines += ["", f"## Sign test: {t['a']} against {t['b']}", "",
              f"{t['a']}'s Spearman beat {t['b']}'s in {t['wins']} of {t['n']} families, lost in {t['losses']} "
              f"({t['ties']} tie(s) dropped; undefined in: {', '.join(t['undefined']) or 'none'}). Exact two-sided binomial sign test: p = {p_text}.",
              "", "| family | outcome |", "|---|---|"] + [f"| {f} | {v} |" for f, v in t["per_family"].items()]
    worse = [f"- {n}: " + ", ".join(f"{f} ({p['spearman'][f]:+.2f})" for f in p["negative"]) for n, p in s["predictors"].items() if p["negative"]]
    lines += ["", "## Worse than chance (Spearman < 0)", ""] + (worse or ["- none"])
    lines += ["", "## Per-family reports", ""] + [f"- {f}: `{s['families'][f]['report']}`" for f in fams]
    return "\n".join(lines) + "\n"


def plot_png(s: dict[str, Any]) -> bytes:
    """One panel per family: each predictor's Spearman as a bar, green for a top-1 hit, red for a miss."""
    plt = pyplot()
    fams = list(s["families"])
    names = list(s["predictors"]) or ["(no predictor)"]
    ncols = min(4, len(fams))
    nrows = math.ceil(len(fams) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 0.28 * len(names) * nrows + 1.6 * nrows), squeeze=False)
    with closing(fig):
        for k, ax in enumerate(axes.flat):
            if k >= len(fams):
                ax.set_visible(False)
                continue
            fam = s["families"][fams[k]]
            for i, name in enumerate(names):
                e = fam["predictors"].get(name)
                if e is None or e["spearman"] is None:
                    ax.text(0.03, i, "n/a", ha="left", va="center", fontsize=7, color="grey")
                    continue
                hit = e["top1"]["hit"]
                ax.barh(i, e["spearman"], color="tab:green" if hit else "tab:red" if hit is False else "tab:grey")
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names if k % ncols == 0 else [], fontsize=7)
            ax.invert_yaxis()
            ax.set_xlim(-1.05, 1.05)
            ax.axvline(0.0, color="black", linewidth=0.6)
            ax.set_title(f"{fams[k]}: best {'/'.join(fam['measured_ranking'][:1]) or 'n/a'} ({fam['n_eval']} eval)", fontsize=9)
            ax.set_xlabel("Spearman vs measured", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.suptitle(f"Predictors per family, against measured {s['measure']} gain (green: top-1 hit, red: miss)", fontsize=10)
        return png(fig, dpi=110)


def _check_out(out: Path, suite: Path, names: Sequence[str]) -> None:
    """Refuse a file, or a non-empty folder no suite run made; record this run's families in the marker."""
    check_out(out, MARK, "validate --suite")
    mark = out / MARK
    old = read_marker(mark, out, FORMAT_VERSION) if mark.exists() else {}
    families = sorted(set(old.get("families", [])) | set(names))
    write_json_atomic(mark, {"format_version": FORMAT_VERSION, "curator_version": __version__, "suite": str(suite), "families": families})


def run_suite(suite: str | Path, out: str | Path, config: ValidateConfig | None = None, progress: ProgressFn = no_progress, loaded: LoadedModel | None = None) -> SuiteResult:
    """Validate every family of ``suite`` with one config into ``out/<family>/``, then write the suite report.

    Returns a ``SuiteResult``: each family's ``ValidateResult``, the summary written to
    ``suite.json`` (per family and predictor: Spearman and top-1; per predictor: the mean and
    hit rate; the sign test), and the report paths."""
    config = config or ValidateConfig()
    if config.predictions:
        raise InputError("--predictions cannot be combined with --suite: a report belongs to one family; each family's predictions are computed into OUT/<family>/predictions/")
    root, out_dir = Path(suite), Path(out)
    if root.is_dir() and out_dir.resolve().parent == root.resolve():
        raise InputError(f"--out {out_dir} is inside --suite {root}, where it would be read as a task family: pass an --out outside the suite folder")
    fams = find_families(root)
    for name, cands, evals in fams:  # bad rows, strategies or --examples stop the run before any family trains
        counts = Counter(c.strategy for c in load_candidates(cands))
        if not load_eval(evals):
            raise InputError(f"{evals}: no eval rows: give at least one eval item with a prompt, response and task")
        unknown = [s for s in config.strategies or () if s not in counts]
        if unknown:
            raise InputError(f"--strategies: unknown strategy {unknown[0]!r} in family {name}: {cands} has {', '.join(sorted(counts))}")
        wanted = {s: n for s, n in counts.items() if config.strategies is None or s in config.strategies}
        low = min(wanted, key=lambda s: (wanted[s], s)) if wanted else None
        if low is not None and config.train.examples and config.train.examples > wanted[low]:
            raise InputError(f"--examples {config.train.examples}: strategy {low!r} of family {name} has only {wanted[low]} candidates ({cands}): use --examples {wanted[low]} or fewer, or leave it out (each family then uses its smallest strategy's count)")
    _check_out(out_dir, root, [name for name, _, _ in fams])
    start = time.perf_counter()
    progress("load model", 0, 1)
    loaded = loaded or load_model(config.model, config.device)
    progress("load model", 1, 1)
    results: dict[str, ValidateResult] = {}
    for i, (name, cands, evals) in enumerate(fams):
        progress("families", i, len(fams))

        def tagged(stage: str, done: int, total: int, name: str = name) -> None:
            progress(f"{name}: {stage}", done, total)

        results[name] = run_validate(cands, evals, out_dir / name, config, progress=tagged, loaded=loaded)
    progress("families", len(fams), len(fams))
    summary = summarise({n: r.report for n, r in results.items()}, config.measure)
    first = next(iter(results.values())).report
    for name, r in results.items():
        summary["families"][name].update({"report": f"{name}/report.json", "trained": len(r.trained), "reused": len(r.reused)})
    summary = {"format_version": FORMAT_VERSION, "curator_version": __version__, "suite": str(root), "model": first["model"], "measure": config.measure,
               "seeds": list(config.seeds), "budget": {k: v for k, v in first["budget"].items() if k != "examples"}, "seconds_this_run": round(time.perf_counter() - start, 1), **summary}
    paths = {"json": out_dir / "suite.json", "markdown": out_dir / "suite.md", "plot": out_dir / "suite.png"}
    write_json_atomic(paths["json"], summary)
    write_text_atomic(paths["markdown"], markdown(summary))
    write_bytes_atomic(paths["plot"], plot_png(summary))
    return SuiteResult(out_dir, results, summary, paths)
