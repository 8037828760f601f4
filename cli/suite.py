"""Terminal summary of `curator validate --suite`: per family the measured ranking, then the predictors across families."""

from __future__ import annotations

from typing import Any

import click


def echo_suite(r: Any) -> None:
    """Print a ``SuiteResult``: runs trained/reused, measured rankings, mean Spearman per predictor, the sign test, the paths."""
    s = r.summary
    measure = s["measure"]
    trained = sum(f["trained"] for f in s["families"].values())
    reused = sum(f["reused"] for f in s["families"].values())
    n = len(s["families"])
    click.echo(f"{n} famil{'y' if n == 1 else 'ies'}: trained {trained} run(s), reused {reused} finished run(s) in {r.out}/<family>/runs")
    for name, f in s["families"].items():
        click.echo(f"  {name}: measured ranking ({measure} gain, {f['n_eval']} eval items): {' > '.join(f['measured_ranking']) or 'none'}")
    for name, p in s["predictors"].items():
        mean = "n/a" if p["mean_spearman"] is None else f"{p['mean_spearman']:+.2f} over {p['n']} famil{'y' if p['n'] == 1 else 'ies'}"
        hits = "n/a" if p["top1_rate"] is None else f"{p['top1_hits']}/{p['top1_n']}"
        click.echo(f"  {name}: mean Spearman {mean}, top-1 hits {hits}")
    if not s["predictors"]:
        click.echo("no predictions to compare: drop --no-predict")
    t = s["sign_test"]
    p_text = "n/a" if t["p_value"] is None else f"{t['p_value']:.4g}"
    click.echo(f"sign test, {t['a']} vs {t['b']}: {t['wins']} win(s), {t['losses']} loss(es) over n={t['n']} famil{'y' if t['n'] == 1 else 'ies'} ({t['ties']} tie(s) dropped), two-sided p = {p_text}")
    for name, res in r.families.items():
        click.echo(f"{name}: {res.paths['markdown']}")
    click.echo(f"report: {r.paths['markdown']} (table: {r.paths['json']}; plot: {r.paths['plot']})")
