"""Inter-annotator agreement and anchoring measures for annotators' rankings, ratings and labels.

Pure functions, no I/O. They say how far curator's annotation results can be trusted: whether
annotators agree with each other (Krippendorff's alpha, Kendall's tau) and whether the ranking
curator pre-fills in Argilla pulls annotators towards it (``anchoring``).

- ``krippendorff_alpha``: reliability of any number of annotators with missing values, over
  labels (nominal), ratings or ranks (ordinal) or numbers (interval). 1 = perfect agreement,
  0 = agreement at chance level, negative = systematic disagreement.
- ``kendall_tau``: Kendall's tau-b between two rankings (ties allowed); ``consensus_taus``: each
  annotator's tau against the aggregated ranking.
- ``anchoring``: compares annotators' agreement with the suggestion to their agreement with each
  other (see its docstring for the rule and ``ANCHOR_UNCHANGED_RATE``/``ANCHOR_TAU_GAP``).
- ``majority_label`` and ``rating_summary``: plain summaries of labels and ratings.

A ranking here is a mapping item (candidate slot) → fractional rank, 1 = best, tied items sharing
the mean of the positions they fill: the output of ``annotations.fractional_ranks``.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from itertools import combinations
from typing import Any, Mapping

import numpy as np

from curator.errors import InputError

LEVELS = ("nominal", "ordinal", "interval")
# Anchoring is flagged when more than this share of submissions kept the suggestion unchanged...
ANCHOR_UNCHANGED_RATE = 0.5
# ...or when mean tau with the suggestion exceeds mean tau between annotators by more than this.
ANCHOR_TAU_GAP = 0.2


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def krippendorff_alpha(units: list[dict[str, float | str]], level: str) -> float | None:
    """Krippendorff's alpha of ``units`` (one dict per unit: annotator id → value) at ``level``.

    Units with fewer than two values cannot be paired and are dropped (None and NaN values count
    as missing). Coincidence-matrix form: each pairable unit u with m_u values adds, for every
    ordered pair of its values from different annotators, 1/(m_u − 1) to o_ck; n_c = Σ_k o_ck and
    n = Σ_c n_c. Then ``α = 1 − (n − 1)·Σ o_ck δ²_ck / Σ n_c n_k δ²_ck`` with δ² by level:
    nominal 0 if c = k else 1; ordinal (Σ_{g=c..k} n_g − (n_c + n_k)/2)² over the sorted
    observed values; interval (c − k)². None when no unit is pairable or the expected
    disagreement is 0 (every value identical), where alpha is undefined.
    """
    if level not in LEVELS:
        raise InputError(f"agreement level {level!r} is unknown: use one of {', '.join(LEVELS)}")
    if not isinstance(units, (list, tuple)):
        raise InputError(f"units must be a list of dicts (annotator id → value), got {type(units).__name__}")
    kept: list[list[Any]] = []
    for i, unit in enumerate(units, start=1):
        if not isinstance(unit, Mapping):
            raise InputError(f"unit {i}: expected a dict of annotator id → value, got {type(unit).__name__}")
        vals = [v for v in unit.values() if not _is_missing(v)]
        for v in vals:
            if level != "nominal" and not _is_number(v):
                raise InputError(f"unit {i}: value {v!r} is not a finite number: {level} alpha needs numbers (use 'nominal' for labels)")
            if level == "nominal" and not isinstance(v, (str, int, float)):
                raise InputError(f"unit {i}: value {v!r} must be a label (string) or a number")
        if len(vals) >= 2:
            kept.append(vals)
    if not kept:
        return None
    pool = [v for vals in kept for v in vals]
    values: list[Any] = list(dict.fromkeys(pool)) if level == "nominal" else sorted(set(pool))
    index = {v: j for j, v in enumerate(values)}
    counts = np.zeros((len(kept), len(values)))
    for u, vals in enumerate(kept):
        for v in vals:
            counts[u, index[v]] += 1
    weighted = counts / (counts.sum(axis=1) - 1)[:, None]  # each unit's pairs weigh 1/(m_u − 1)
    o = weighted.T @ counts - np.diag(weighted.sum(axis=0))  # O(N·V + V²) memory, not O(N·V²)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if level == "nominal":
        d2 = 1.0 - np.eye(len(values))
    elif level == "interval":
        x = np.asarray(values, dtype=float)
        d2 = (x[:, None] - x[None, :]) ** 2
    else:
        cum = np.cumsum(n_c)
        lo = np.minimum.outer(np.arange(len(values)), np.arange(len(values)))
        hi = np.maximum.outer(np.arange(len(values)), np.arange(len(values)))
        between = cum[hi] - cum[lo] + n_c[lo]
        d2 = (between - (n_c[:, None] + n_c[None, :]) / 2) ** 2
    expected = float((np.outer(n_c, n_c) * d2).sum())
    if expected <= 0:
        return None
    return float(1.0 - (n - 1) * float((o * d2).sum()) / expected)


def _check_ranking(r: Any, where: str) -> Mapping[str, float]:
    if not isinstance(r, Mapping):
        raise InputError(f"{where}: expected a dict item → rank, got {type(r).__name__}")
    for k, v in r.items():
        if not _is_number(v):
            raise InputError(f"{where}: item {k!r} has rank {v!r}: ranks must be finite numbers (1 = best)")
    return r


def kendall_tau(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Kendall's tau-b of two rankings (item → rank, lower = better) over their common items.

    ``τ_b = (C − D) / √((P − T_a)(P − T_b))`` with C/D the concordant/discordant pairs, P all
    pairs and T_a/T_b the pairs tied in a/b: it is 1 for the same order, −1 for the reverse, and
    corrects for ties. None with fewer than two common items or when either side ties them all.
    """
    a, b = _check_ranking(a, "ranking a"), _check_ranking(b, "ranking b")
    common = [k for k in a if k in b]
    if len(common) < 2:
        return None
    x = np.array([float(a[k]) for k in common])
    y = np.array([float(b[k]) for k in common])
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(common), k=1)
    sx, sy = sx[iu], sy[iu]
    denom = math.sqrt(float(np.abs(sx).sum()) * float(np.abs(sy).sum()))
    if denom == 0:
        return None
    return float((sx * sy).sum()) / denom


def consensus_taus(rankings: dict[str, dict[str, float]], consensus: dict[str, float]) -> dict[str, float | None]:
    """Each annotator's Kendall tau-b against the consensus ranking (annotator id → tau or None)."""
    if not isinstance(rankings, Mapping):
        raise InputError(f"rankings must map annotator id → ranking, got {type(rankings).__name__}")
    return {str(u): kendall_tau(r, consensus) for u, r in rankings.items()}


def _tie_groups(r: Mapping[str, float]) -> list[frozenset[str]]:
    return [frozenset(k for k, v in r.items() if v == rank) for rank in sorted(set(r.values()))]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _verdict(rate: float | None, with_sugg: float | None, between: float | None) -> str:
    if rate is None:
        return "No submission had a suggestion, so anchoring cannot be assessed."
    kept = f"{rate:.0%} of submissions kept the suggestion unchanged"
    if with_sugg is None or between is None:
        flagged = rate > ANCHOR_UNCHANGED_RATE
        why = "no two annotators ranked the same record, so only the unchanged rate is judged"
        return f"{kept} ({why}): {'this suggests anchoring' if flagged else 'no sign of anchoring'}."
    gap = with_sugg - between
    flagged = rate > ANCHOR_UNCHANGED_RATE or gap > ANCHOR_TAU_GAP
    cmp = "exceeds" if gap >= 0 else "is below"
    return (f"Agreement with the suggestion (tau {with_sugg:.2f}) {cmp} agreement between annotators "
            f"(tau {between:.2f}) by {abs(gap):.2f} and {kept}: "
            f"{'this suggests anchoring' if flagged else 'no sign of anchoring'}.")


def anchoring(annotations: list[dict]) -> dict:
    """How much the pre-filled suggestion seems to pull annotators' rankings towards it.

    Input: one entry per (record, annotator) submission, ``{"record_id", "user", "ranking",
    "suggested"}`` (rankings as slot → fractional rank; ``suggested`` may be None). A user may
    submit a record once. Output ``{"annotators": {user: stats}, "overall": stats}``:

    - per annotator: ``n`` submissions with a suggestion; ``unchanged``, those whose ranking has
      exactly the suggestion's tie groups over the same slots; ``unchanged_rate`` = unchanged / n
      (None when n = 0); ``tau_with_suggestion``, the mean Kendall tau-b of ranking vs suggestion
      (None when undefined everywhere).
    - overall: ``n``, ``unchanged_rate`` and ``tau_with_suggestion`` over all submissions with a
      suggestion; ``pairs`` and ``tau_between_annotators``, the mean tau over every pair of
      annotators who both submitted a record (None when no record has two); ``verdict``.

    Rule: anchoring is flagged when unchanged_rate > ``ANCHOR_UNCHANGED_RATE`` (most annotators
    just accepted the pre-fill) or tau_with_suggestion − tau_between_annotators >
    ``ANCHOR_TAU_GAP`` (annotators agree with the suggestion much more than with each other,
    whereas independent judges of similar quality agree with it about as much as with each other).
    A suggestion far better than every annotator can also open that gap, so the verdict says
    "suggests", not "proves". Without between-annotator pairs only the unchanged rate is judged.
    """
    if not isinstance(annotations, (list, tuple)):
        raise InputError(f"annotations must be a list of submissions, got {type(annotations).__name__}")
    per_user: dict[str, dict[str, Any]] = {}
    by_record: dict[str, dict[str, Mapping[str, float]]] = {}
    for i, e in enumerate(annotations, start=1):
        if not isinstance(e, Mapping):
            raise InputError(f"submission {i}: expected a dict with record_id, user, ranking, suggested")
        for key in ("record_id", "user", "ranking"):
            if e.get(key) is None:
                raise InputError(f"submission {i}: missing '{key}': give record_id, user, ranking and suggested")
        rec, user = str(e["record_id"]), str(e["user"])
        ranking = _check_ranking(e["ranking"], f"submission {i} ranking")
        suggested = e.get("suggested")
        if user in by_record.setdefault(rec, {}):
            raise InputError(f"submission {i}: user {user!r} submitted record {rec!r} twice: keep one submission each")
        by_record[rec][user] = ranking
        stats = per_user.setdefault(user, {"n": 0, "unchanged": 0, "taus": []})
        if suggested is None or not suggested:
            continue
        suggested = _check_ranking(suggested, f"submission {i} suggested")
        stats["n"] += 1
        stats["unchanged"] += int(set(ranking) == set(suggested) and _tie_groups(ranking) == _tie_groups(suggested))
        tau = kendall_tau(dict(ranking), dict(suggested))
        if tau is not None:
            stats["taus"].append(tau)
    between = [t for users in by_record.values() for u, v in combinations(sorted(users), 2)
               if (t := kendall_tau(dict(users[u]), dict(users[v]))) is not None]
    n = sum(s["n"] for s in per_user.values())
    rate = sum(s["unchanged"] for s in per_user.values()) / n if n else None
    with_sugg = _mean([t for s in per_user.values() for t in s["taus"]])
    between_mean = _mean(between)
    return {
        "annotators": {
            u: {"n": s["n"], "unchanged": s["unchanged"], "unchanged_rate": s["unchanged"] / s["n"] if s["n"] else None,
                "tau_with_suggestion": _mean(s["taus"])}
            for u, s in sorted(per_user.items())
        },
        "overall": {"n": n, "unchanged_rate": rate, "tau_with_suggestion": with_sugg, "pairs": len(between),
                    "tau_between_annotators": between_mean, "verdict": _verdict(rate, with_sugg, between_mean)},
    }


def majority_label(values: list[str]) -> tuple[str | None, float]:
    """The most frequent label and its share of ``values``; None (with the top share) on a tie for first."""
    if not values:
        return None, 0.0
    counts = Counter(values).most_common()
    top = counts[0][1]
    share = top / len(values)
    if len(counts) > 1 and counts[1][1] == top:
        return None, share
    return counts[0][0], share


def rating_summary(values: list[int | float]) -> dict:
    """``{"n", "mean", "median"}`` of numeric ratings (mean and median None when there are none)."""
    for v in values:
        if not _is_number(v):
            raise InputError(f"rating {v!r} is not a finite number: give ratings as numbers (e.g. 1-5)")
    if not values:
        return {"n": 0, "mean": None, "median": None}
    return {"n": len(values), "mean": float(statistics.fmean(values)), "median": float(statistics.median(values))}
