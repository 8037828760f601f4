"""Annotators' rankings of a record's candidates, aggregated into one ranking with an agreement measure.

Pure functions, no I/O besides reading a pulled file. ``curator argilla pull`` turns each Argilla
record into the dict ``aggregate`` takes; ``curator export`` reads the file pull wrote.

**Aggregation.** Each annotator ranks the record's candidate slots (ties allowed: equal ranks).
Ranks are turned into *fractional* ranks (tied items share the mean of the positions they fill,
1 = best); a slot an annotator left out counts as tied last for that annotator.

- ``borda`` (default): a candidate earns ``n − fractional rank`` points from each annotator
  (the number of candidates it beats, plus half of those it ties); candidates are ordered by
  total points, best first.
- ``mean_rank``: candidates are ordered by their mean fractional rank over the annotators who
  ranked them, lowest first.

With complete rankings the two give the same order; they differ on partial rankings. Remaining
ties are broken by the other measure, then by slot order, so the result is deterministic.

**Agreement** is Kendall's W with the tie correction::

    W = 12·S / (m²(n³ − n) − m·Σ_j T_j),   S = Σ_i (R_i − m(n+1)/2)²,   T_j = Σ_groups (t³ − t)

over m annotators and n candidates (R_i: the sum of candidate i's fractional ranks). W is 1 for
identical rankings and 0 when the rankings cancel out (two reversed rankings). It is None with
fewer than two annotators, fewer than two candidates, or when every annotator tied everything.

**Pulled-file schema** (one row per Argilla record; ``PULLED_FIELDS`` are required)::

    record_id      str    the record's id in Argilla (a content hash of prompt + candidate ids)
    group          str    the candidates' group (one prompt)
    task           str|None
    prompt         str, or a list of {role, content} chat messages
    candidates     [{slot, id, strategy, text}]          in slot order
    status         "submitted" | "discarded" | "pending" (pending: no submitted/discarded response)
    questions      "ranking" | "rating" | "both"      (format 2; absent = ranking)
    annotations    [{user_id, username, ranking: [{candidate_id, slot, rank}], best_strategy, comment,
                     ratings: [{candidate_id, slot, rating}], labels: [{candidate_id, slot, label}]}]
                   submitted responses only, one per annotator, ranking best first (ties = same rank)
    candidate_ratings [{candidate_id, mean, median, n}]    (format 2) 1-5 ratings aggregated
    candidate_labels  [{candidate_id, label, share, n}]    (format 2) majority keep/drop; None on a tie
    ranking        [candidate id]  aggregated, best first ([] unless submitted)
    ranking_scores [{candidate_id, borda, mean_rank}]
    method         "borda" | "mean_rank"
    agreement      float|None      Kendall's W
    n_annotators   int
    best_strategy_votes [{strategy, votes}]
    suggested_ranking   [candidate id]  curator's suggestion pushed with the record
    scores         [{candidate_id, alignment, influence, score}]  the metadata pushed (None where absent)
    dataset, workspace, pulled_at, model_fingerprint, curator_version
    format_version int  PULLED_FORMAT (a newer one is refused)
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Mapping

from curator.config import is_int
from curator.errors import InputError

METHODS = ("borda", "mean_rank")
STATUSES = ("submitted", "discarded", "pending")
PULLED_FORMAT = 2  # 2 added ratings and keep/drop labels (format 1 files still read)
RATING_RANGE = (1, 5)
LABELS = ("keep", "drop")
PULLED_FIELDS = ("record_id", "prompt", "candidates", "status", "ranking", "n_annotators")
CANDIDATE_FIELDS = ("id", "strategy", "text")


# --------------------------------------------------------------------------- one annotator


def rank_groups(ranking: Any, slots: list[str], where: str = "ranking") -> list[list[str]]:
    """An annotator's ranking as tie groups, best first, over ``slots`` only.

    ``ranking`` is a list of slot names (strict order), a list of ``{"value": slot, "rank": r}``
    items (Argilla's form; equal ranks are ties), or a mapping slot → rank. Unknown slots are
    dropped (placeholder slots of a smaller group); a slot given twice is an error.
    """
    if isinstance(ranking, Mapping):
        items = [(str(k), v) for k, v in ranking.items()]
    elif isinstance(ranking, (list, tuple)):
        items = []
        for pos, item in enumerate(ranking, start=1):
            if isinstance(item, Mapping):
                if "value" not in item:
                    raise InputError(f"{where}: item {pos} has no 'value': give {{'value': slot, 'rank': r}}")
                rank = item.get("rank")
                items.append((str(item["value"]), pos if rank is None else rank))
            else:
                items.append((str(item), pos))
    else:
        raise InputError(f"{where}: expected a list of slots or of {{'value', 'rank'}} items, got {type(ranking).__name__}")
    seen: dict[str, float] = {}
    for slot, rank in items:
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not math.isfinite(rank):
            raise InputError(f"{where}: slot {slot!r} has rank {rank!r}: ranks must be numbers (1 = best)")
        if slot in seen:
            raise InputError(f"{where}: slot {slot!r} is ranked twice: rank each slot once")
        seen[slot] = float(rank)
    known = {s: r for s, r in seen.items() if s in slots}
    groups: list[list[str]] = []
    for r in sorted(set(known.values())):
        groups.append(sorted((s for s, v in known.items() if v == r), key=slots.index))
    return groups


def fractional_ranks(groups: list[list[str]], slots: list[str]) -> dict[str, float]:
    """Fractional ranks (1 = best, ties share the mean position); unranked slots tie last."""
    out: dict[str, float] = {}
    pos = 0
    for g in groups:
        out.update({s: pos + (len(g) + 1) / 2 for s in g})
        pos += len(g)
    rest = [s for s in slots if s not in out]
    out.update({s: pos + (len(rest) + 1) / 2 for s in rest})
    return out


def _tie_term(groups: list[list[str]], slots: list[str]) -> float:
    sizes = [len(g) for g in groups]
    rest = len(slots) - sum(sizes)
    return float(sum(t**3 - t for t in sizes + [rest]))


def kendalls_w(rankings: list[list[list[str]]], slots: list[str]) -> float | None:
    """Kendall's W (tie-corrected) of tie-group rankings over ``slots``; None where undefined."""
    m, n = len(rankings), len(slots)
    if m < 2 or n < 2:
        return None
    ranks = [fractional_ranks(g, slots) for g in rankings]
    totals = [sum(r[s] for r in ranks) for s in slots]
    mean = m * (n + 1) / 2
    s = sum((t - mean) ** 2 for t in totals)
    denom = m * m * (n**3 - n) - m * sum(_tie_term(g, slots) for g in rankings)
    if denom <= 0:
        return None
    return float(min(1.0, max(0.0, 12 * s / denom)))


# --------------------------------------------------------------------------- one record


def _aggregate_one(rec: Mapping[str, Any], method: str, where: str) -> dict[str, Any]:
    slot_map = rec.get("slots")
    if not isinstance(slot_map, Mapping) or not slot_map:
        raise InputError(f"{where}: missing 'slots' (slot → candidate id): give the candidate id of each slot")
    slots = [str(s) for s in slot_map]
    status = rec.get("status", "submitted")
    if status not in STATUSES:
        raise InputError(f"{where}: status {status!r} is unknown: use one of {', '.join(STATUSES)}")
    raw = rec.get("rankings") or {}
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: 'rankings' must map annotator id → ranking, got {type(raw).__name__}")
    per_user = {str(u): rank_groups(r, slots, f"{where}: annotator {u}") for u, r in raw.items()}
    per_user = {u: g for u, g in per_user.items() if g}
    out = dict(rec)
    votes = Counter(str(v) for v in (rec.get("best_strategy") or {}).values() if v)
    out["best_strategy_votes"] = dict(sorted(votes.items(), key=lambda kv: (-kv[1], kv[0])))
    out["annotator_rankings"] = {
        u: [{"candidate_id": slot_map[s], "slot": s, "rank": k + 1} for k, g in enumerate(groups) for s in g]
        for u, groups in per_user.items()
    }
    judged = _judgements(rec, slot_map, where)
    out.update(judged)
    out["n_annotators"] = len(set(per_user) | set(judged["annotator_ratings"]) | set(judged["annotator_labels"]))
    if status != "submitted" or not per_user:
        out.update(ranking=[], ranking_scores=[], agreement=None, method=method)
        return out
    n = len(slots)
    borda = {s: 0.0 for s in slots}
    rank_sum = {s: 0.0 for s in slots}
    rank_n = {s: 0 for s in slots}
    for groups in per_user.values():
        fr = fractional_ranks(groups, slots)
        ranked = {s for g in groups for s in g}
        for s in slots:
            borda[s] += n - fr[s]
            if s in ranked:
                rank_sum[s] += fr[s]
                rank_n[s] += 1
    mean_rank = {s: (rank_sum[s] / rank_n[s] if rank_n[s] else math.inf) for s in slots}
    if method == "borda":
        key = lambda s: (-borda[s], mean_rank[s], slots.index(s))  # noqa: E731
    else:
        key = lambda s: (mean_rank[s], -borda[s], slots.index(s))  # noqa: E731
    order = sorted(slots, key=key)
    out["ranking"] = [slot_map[s] for s in order]
    out["ranking_scores"] = [
        {"candidate_id": slot_map[s], "borda": borda[s], "mean_rank": None if math.isinf(mean_rank[s]) else mean_rank[s]} for s in order
    ]
    out["agreement"] = kendalls_w(list(per_user.values()), slots)
    out["method"] = method
    return out


def _judgements(rec: Mapping[str, Any], slot_map: Mapping[str, str], where: str) -> dict[str, Any]:
    """Ratings (1-5) and keep/drop labels per annotator and per candidate, aggregated: the mean
    and median rating, and the majority label with its share (None on a tie for first)."""
    ratings: dict[str, dict[str, int]] = {}
    labels: dict[str, dict[str, str]] = {}
    for u, given in (rec.get("ratings") or {}).items():
        for s, v in (given or {}).items():
            if s not in slot_map or v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or not RATING_RANGE[0] <= v <= RATING_RANGE[1]:
                raise InputError(f"{where}: annotator {u} rated slot {s} {v!r}: a rating is an integer from {RATING_RANGE[0]} to {RATING_RANGE[1]}")
            ratings.setdefault(str(u), {})[str(s)] = int(v)
    for u, given in (rec.get("labels") or {}).items():
        for s, v in (given or {}).items():
            if s not in slot_map or v is None:
                continue
            if v not in LABELS:
                raise InputError(f"{where}: annotator {u} labelled slot {s} {v!r}: use one of {', '.join(LABELS)}")
            labels.setdefault(str(u), {})[str(s)] = str(v)
    cand_ratings, cand_labels = [], []
    for s, cid in slot_map.items():
        rs = sorted(r[s] for r in ratings.values() if s in r)
        if rs:
            mid = len(rs) // 2
            median = float(rs[mid]) if len(rs) % 2 else (rs[mid - 1] + rs[mid]) / 2
            cand_ratings.append({"candidate_id": cid, "mean": sum(rs) / len(rs), "median": median, "n": len(rs)})
        ls = Counter(lab[s] for lab in labels.values() if s in lab)
        if ls:
            (top, k), *rest = ls.most_common()
            cand_labels.append({"candidate_id": cid, "label": None if rest and rest[0][1] == k else top, "share": k / sum(ls.values()), "n": sum(ls.values())})
    return {
        "annotator_ratings": {u: [{"candidate_id": slot_map[s], "slot": s, "rating": v} for s, v in r.items()] for u, r in ratings.items()},
        "annotator_labels": {u: [{"candidate_id": slot_map[s], "slot": s, "label": v} for s, v in r.items()] for u, r in labels.items()},
        "candidate_ratings": cand_ratings,
        "candidate_labels": cand_labels,
    }


def aggregate(records: Iterable[Mapping[str, Any]], method: str = "borda") -> list[dict[str, Any]]:
    """Aggregate each record's submitted rankings (see the module docstring).

    Input per record: ``slots`` (slot → candidate id, slot order = display order; only slots with
    a candidate), ``rankings`` (annotator id → ranking of slots), optional ``ratings`` and
    ``labels`` (annotator id → {slot: 1-5} / {slot: keep|drop}), ``best_strategy`` (annotator id →
    strategy label) and ``status``. Output: the same dict plus ``ranking`` (candidate ids, best
    first), ``ranking_scores``, ``agreement``, ``n_annotators`` (annotators who answered anything),
    ``annotator_rankings`` / ``annotator_ratings`` / ``annotator_labels`` (per annotator, by
    candidate id), ``candidate_ratings`` (mean, median, n), ``candidate_labels`` (majority label,
    its share, n), ``best_strategy_votes`` and ``method``. Every input record comes back, whatever
    its status.
    """
    if method not in METHODS:
        raise InputError(f"aggregation method {method!r} is unknown: use one of {', '.join(METHODS)}")
    return [_aggregate_one(r, method, f"record {r.get('id', i)}") for i, r in enumerate(records, start=1)]


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts by status and the tally of best-strategy votes over aggregated records."""
    status = Counter(str(r.get("status")) for r in records)
    return {"records": sum(status.values()), **{s: status.get(s, 0) for s in STATUSES}}


def tally_strategies(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Best-strategy votes summed over records (each record's ``best_strategy_votes``)."""
    total: Counter[str] = Counter()
    for r in records:
        votes = r.get("best_strategy_votes") or {}
        if isinstance(votes, Mapping):
            total.update({str(k): int(v) for k, v in votes.items()})
        else:  # the pulled-file form: [{strategy, votes}]
            total.update({str(v["strategy"]): int(v["votes"]) for v in votes})
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------- pulled file


def _check_row(where: str, row: dict[str, Any]) -> None:
    for name in PULLED_FIELDS:
        if name not in row:
            raise InputError(f"{where}: missing field '{name}': pass a file written by `curator argilla pull`")
    cands = row["candidates"]
    if not isinstance(cands, list) or not cands:
        raise InputError(f"{where}: field 'candidates' must be a non-empty list of {{slot, id, strategy, text}}")
    for k, c in enumerate(cands):
        if not isinstance(c, dict):
            raise InputError(f"{where}: candidates[{k}] must be an object with id, strategy and text")
        for name in CANDIDATE_FIELDS:
            if c.get(name) is None:
                raise InputError(f"{where}: candidates[{k}] is missing field '{name}': pass a file written by `curator argilla pull`")
    version = row.get("format_version", PULLED_FORMAT)
    if isinstance(version, int) and version > PULLED_FORMAT:
        raise InputError(f"{where}: pulled-file format version {version} is newer than this curator reads ({PULLED_FORMAT}): upgrade curator")
    if row["status"] not in STATUSES:
        raise InputError(f"{where}: field 'status' is {row['status']!r}: expected one of {', '.join(STATUSES)}")
    ranking = row["ranking"]
    if ranking is None:
        row["ranking"] = ranking = []
    if not isinstance(ranking, list):
        raise InputError(f"{where}: field 'ranking' must be a list of candidate ids (best first)")
    ids = {c["id"] for c in cands}
    unknown = [r for r in ranking if r not in ids]
    if unknown:
        raise InputError(f"{where}: field 'ranking' names candidate {unknown[0]!r}, which is not in 'candidates'")
    n = row["n_annotators"]
    if not is_int(n) or n < 0:
        raise InputError(f"{where}: field 'n_annotators' is {n!r}: expected an integer >= 0")
    prompt = row["prompt"]
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt))):
        raise InputError(f"{where}: field 'prompt' must be a string or a list of {{role, content}} messages")


def read_pulled(path: Any) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a pulled file (JSONL, Parquet, JSON or a datasets folder) as (location, row), validated."""
    from curator.io.data import read_rows

    rows = read_rows(path)
    for where, row in rows:
        _check_row(where, row)
    return rows
