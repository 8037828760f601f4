"""One ranking of each prompt's candidates, with a one-line explanation, for annotators.

Two signals are combined: *alignment* (from ``curator align``: how close a candidate is to the
target model's own outputs) and *influence* (from the influence stage: how much training on the
candidate should lower the eval loss). They live on different scales, so each is z-scored across
all candidates first; the combined score is ``w_a·z(alignment) + w_i·z(influence)`` over the
signals present. A candidate missing a signal's value gets z = 0 for it (neutral: neither helped
nor hurt), so it is ranked by its other signal. Within each group (prompt) candidates are ranked
by the combined score, best first; ties go to the smaller id so reruns give the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from curator.errors import InputError
from curator.io.stats import finite_or_none, zscore
from curator.influence.scoring import INFLUENCE_PREFIX

OUTPUT_COLUMNS = ["id", "group", "strategy", "task", "rank", "score", "alignment", "influence", "best_influence_task", "explanation"]
REQUIRED_SCORE_COLUMNS = ("id", "strategy", "group")


@dataclass(frozen=True)
class RankingWeights:
    """How much each z-scored signal counts in the combined score, and which influence column to use."""

    alignment: float = 1.0
    influence: float = 1.0
    influence_column: str = "influence_max"

    def __post_init__(self) -> None:
        for name in ("alignment", "influence"):
            w = getattr(self, name)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise InputError(f"ranking weight {name}={w!r} is invalid: use a finite number >= 0")
        if self.alignment == 0 and self.influence == 0:
            raise InputError("ranking weights are both zero: give alignment or influence a positive weight")
        if not isinstance(self.influence_column, str) or not self.influence_column:
            raise InputError(
                f"influence_column={self.influence_column!r} is invalid: name a column of the influence table, "
                f"e.g. influence_max, influence_mean or {INFLUENCE_PREFIX}<eval_task>"
            )


@dataclass(frozen=True)
class SignalNote:
    """What the explanation says about one signal of one candidate.

    ``place`` is ``best``/``worst`` within the group, ``middle``, or ``alone`` (a single-candidate
    group, or every candidate tied: nothing to compare with). ``target`` is the eval task an
    influence value refers to, when known.
    """

    kind: str  # "alignment" or "influence"
    value: float | None
    place: str
    used: bool = True
    target: str | None = None
    label: str = "influence"


def _fmt(x: float) -> str:
    """A compact number: three significant digits."""
    return f"{x:.3g}"


def _phrase(note: SignalNote) -> str:
    """The part of the explanation about one signal."""
    value = "n/a" if note.value is None else _fmt(note.value)
    unused = " (not used)" if not note.used else ""
    place = note.place if note.used and note.value is not None else "alone"
    if note.kind == "alignment":
        if place == "best":
            return f"closest to the model's own answers (alignment {value}){unused}"
        if place == "worst":
            return f"furthest from the model's own answers (alignment {value}){unused}"
        return f"alignment {value}{unused}"
    what = note.label + (f" on {note.target}" if note.target else "")
    if place in ("best", "worst"):
        return f"{'highest' if place == 'best' else 'lowest'} {what} ({value}){unused}"
    return f"{what} {value}{unused}"


def explain(rank: int, of: int, notes: list[SignalNote]) -> str:
    """One line for annotators: ``ranked <rank> of <of>: <what each signal says>``."""
    parts = [_phrase(n) for n in notes]
    return f"ranked {rank} of {of}" + (": " + ", ".join(parts) if parts else "")


def _numeric(df: pd.DataFrame, col: str, where: str) -> np.ndarray:
    """A column as floats; InputError naming the first row that is not a number."""
    if pd.api.types.is_bool_dtype(df[col]):
        raise InputError(f"{where} column '{col}' holds booleans; it must hold numbers (NaN where missing)")
    coerced = pd.to_numeric(df[col], errors="coerce")
    bad = coerced.isna() & df[col].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{where} row {row}: column '{col}' holds {df[col].iloc[row]!r}, not a number; use a float or leave it empty")
    return coerced.to_numpy(dtype=float)


def _validate_scores(scores: pd.DataFrame) -> None:
    if not isinstance(scores, pd.DataFrame):
        raise InputError(f"scores table: expected a pandas DataFrame, got {type(scores).__name__}; pass the table `curator align` wrote")
    if len(scores) == 0:
        raise InputError("scores table is empty: run `curator align` on some candidates first")
    missing = [c for c in REQUIRED_SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise InputError(f"scores table is missing column(s) {', '.join(missing)}; it needs {', '.join(REQUIRED_SCORE_COLUMNS)}")
    for col in REQUIRED_SCORE_COLUMNS:
        if scores[col].isna().any():
            row = int(np.flatnonzero(scores[col].isna().to_numpy())[0])
            raise InputError(f"scores table row {row}: column '{col}' is empty; every candidate needs one")
    dup = scores["id"].astype(str).duplicated()
    if dup.any():
        raise InputError(f"scores table: candidate id {scores['id'].astype(str)[dup].iloc[0]!r} appears more than once; ids must be unique")


def _join_influence(scores: pd.DataFrame, influence: pd.DataFrame, column: str) -> tuple[np.ndarray, list[str | None]]:
    """Each candidate's chosen influence value and the eval task it helps most (None if unknown)."""
    if not isinstance(influence, pd.DataFrame):
        raise InputError(f"influence table: expected a pandas DataFrame, got {type(influence).__name__}; pass the table the influence stage wrote")
    if "id" not in influence.columns:
        raise InputError("influence table has no 'id' column: pass the table the influence stage wrote")
    if column not in influence.columns:
        found = [str(c) for c in influence.columns if str(c).startswith("influence")]
        raise InputError(
            f"influence table has no column {column!r} (influence columns: {', '.join(found) or 'none'}); "
            "pick one of those as the influence column"
        )
    ids = influence["id"].astype(str)
    dup = ids.duplicated()
    if dup.any():
        raise InputError(f"influence table: candidate id {ids[dup].iloc[0]!r} appears more than once; ids must be unique")
    wanted = scores["id"].astype(str)
    absent = wanted[~wanted.isin(set(ids))]
    if len(absent):
        examples = ", ".join(repr(x) for x in absent.iloc[:3])
        raise InputError(
            f"{len(absent)} of {len(wanted)} candidate ids are missing from the influence table (e.g. {examples}); "
            "compute influence for the same candidates you scored with `curator align`, or rank without influence"
        )
    table = influence.set_index(ids).loc[wanted.to_numpy()]
    values = _numeric(table.reset_index(drop=True), column, "influence table")
    tasks = [str(c)[len(INFLUENCE_PREFIX):] for c in influence.columns if str(c).startswith(INFLUENCE_PREFIX) and len(str(c)) > len(INFLUENCE_PREFIX)]
    best: list[str | None] = [None] * len(wanted)
    if tasks:
        per_task = np.column_stack([_numeric(table.reset_index(drop=True), INFLUENCE_PREFIX + t, "influence table") for t in tasks])
        for r, row in enumerate(per_task):
            if np.isfinite(row).any():
                best[r] = " ".join(tasks[int(np.nanargmax(row))].split())
    return values, best


def _place(values: np.ndarray, i: int) -> str:
    """Where value ``i`` stands in its group: best, worst, middle, or alone (nothing to compare)."""
    finite = values[np.isfinite(values)]
    if not np.isfinite(values[i]) or finite.size < 2 or finite.max() == finite.min():
        return "alone"
    if values[i] == finite.max():
        return "best"
    if values[i] == finite.min():
        return "worst"
    return "middle"


def _influence_label(column: str) -> tuple[str, str | None]:
    """How the explanation names the chosen influence column, and its fixed eval task if any."""
    if column.startswith(INFLUENCE_PREFIX):
        return "influence", " ".join(column[len(INFLUENCE_PREFIX):].split())
    return {"influence_max": "influence", "influence_mean": "mean influence"}.get(column, column), None


def rank_candidates(
    scores: pd.DataFrame, influence: pd.DataFrame | None = None, weights: RankingWeights = RankingWeights()
) -> pd.DataFrame:
    """Rank each group's candidates by the weighted sum of z-scored alignment and influence.

    ``influence`` is joined on ``id``; every scored candidate must be in it. Without it, or with
    no ``alignment`` column in ``scores``, only the signal present is used. Returns one row per
    candidate, groups in order of first appearance and each group's candidates by rank.
    """
    _validate_scores(scores)
    if not isinstance(weights, RankingWeights):
        raise InputError(f"weights must be a RankingWeights, got {type(weights).__name__}")
    n = len(scores)
    alignment = _numeric(scores, "alignment", "scores table") if "alignment" in scores.columns else np.full(n, np.nan)
    # an alignment column with no value at all (e.g. align --metrics perplexity) is no signal
    has_alignment = bool(np.isfinite(alignment).any())
    infl: np.ndarray | None = None
    best_task: list[str | None] = [None] * n
    if influence is not None:
        infl, best_task = _join_influence(scores, influence, weights.influence_column)
    use_a = has_alignment and weights.alignment > 0
    use_i = infl is not None and weights.influence > 0
    if not (use_a or use_i):
        have = [s for s, ok in (("alignment", has_alignment), ("influence", infl is not None)) if ok]
        raise InputError(
            f"nothing to rank by: signals present: {', '.join(have) or 'none'}; weights alignment={weights.alignment}, "
            f"influence={weights.influence}. Add an 'alignment' column (curator align), pass an influence table, "
            "or give a present signal a positive weight"
        )
    combined = np.zeros(n)
    if use_a:
        combined += weights.alignment * zscore(alignment)
    if use_i:
        combined += weights.influence * zscore(infl)

    ids = scores["id"].astype(str).to_numpy()
    groups = scores["group"].to_numpy()
    group_keys = scores["group"].astype(str).to_numpy()
    order_of_group = {g: k for k, g in enumerate(dict.fromkeys(group_keys))}
    label, fixed_target = _influence_label(weights.influence_column)
    task = scores["task"].to_numpy() if "task" in scores.columns else np.full(n, None, dtype=object)
    rows: list[dict[str, Any]] = []
    for g in order_of_group:
        members = np.flatnonzero(group_keys == g)
        members = np.array(sorted(members, key=lambda i: (-combined[i], ids[i])), dtype=int)
        a_vals, i_vals = alignment[members], (infl[members] if infl is not None else None)
        for pos, i in enumerate(members):
            notes = []
            if has_alignment:
                notes.append(SignalNote("alignment", finite_or_none(alignment[i]), _place(a_vals, pos), use_a))
            if i_vals is not None:
                target = fixed_target if fixed_target else (best_task[i] if weights.influence_column == "influence_max" else None)
                notes.append(SignalNote("influence", finite_or_none(infl[i]), _place(i_vals, pos), use_i, target, label))
            rows.append({
                "id": scores["id"].iloc[i],
                "group": groups[i],
                "strategy": scores["strategy"].iloc[i],
                "task": None if pd.isna(task[i]) else task[i],
                "rank": pos + 1,
                "score": float(combined[i]),
                "alignment": float(alignment[i]),
                "influence": None if infl is None else float(infl[i]),
                "best_influence_task": best_task[i],
                "explanation": explain(pos + 1, len(members), notes),
            })
    # column by column: building from records would turn None (no task, no influence) into NaN
    nullable = {"task", "best_influence_task"} | ({"influence"} if infl is None else set())
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object if c in nullable else None) for c in OUTPUT_COLUMNS})
