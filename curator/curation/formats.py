"""The rows of each export format, from one pulled record (TRL's dataset formats).

A record's candidates are ordered by the annotators' **ranking** (aggregated, best first) or by
their **ratings** (mean rating, best first; candidates nobody rated are left out). ``auto`` uses
the ranking where the record has one, else the ratings.

- **SFT** (``prompt``/``completion``, or ``messages``): ``top``, the best candidate of that order;
  ``kept``, every candidate whose majority label is keep; ``rated``, every candidate whose mean
  rating is at least ``min_rating``.
- **DPO** (``prompt``/``chosen``/``rejected``): ``top-vs-each`` pairs the best with each other
  candidate, ``top-vs-bottom`` with the last, ``all-pairs`` every ordered pair; a pair is kept
  when its margin exceeds ``min_margin`` (rank margin: positions apart in the aggregated ranking,
  with tied aggregate scores giving 0; rating margin: difference of mean ratings).
- **KTO** (``prompt``/``completion``/``label``): from keep/drop labels (majority; ties skipped),
  or from ratings (mean >= ``min_rating`` is desirable, <= ``max_rating`` undesirable, between is
  skipped). ``auto`` is decided once per export: labels when any record has one.

Text prompts give string columns; with ``conversational`` (or any chat prompt in the export) the
prompt is a message list and each completion one assistant message, so a column never mixes types.
"""

from __future__ import annotations

from typing import Any

ORDERS = ("auto", "ranking", "rating")
SFT_FROM = ("top", "kept", "rated")
DPO_PAIRS = ("top-vs-each", "top-vs-bottom", "all-pairs")
KTO_FROM = ("auto", "labels", "ratings")


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def as_messages(prompt: Any) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


def provenance(row: dict[str, Any]) -> dict[str, Any]:
    agreement = row.get("agreement")
    if isinstance(agreement, float) and agreement != agreement:
        agreement = None
    return {"record_id": str(row["record_id"]), "group": row.get("group"), "task": row.get("task"), "n_annotators": int(row["n_annotators"]), "agreement": agreement, "dataset": row.get("dataset")}


def mean_ratings(row: dict[str, Any]) -> dict[str, float]:
    return {str(r["candidate_id"]): float(r["mean"]) for r in row.get("candidate_ratings") or [] if r.get("mean") is not None}


def majority_labels(row: dict[str, Any]) -> dict[str, str]:
    return {str(r["candidate_id"]): str(r["label"]) for r in row.get("candidate_labels") or [] if r.get("label") is not None}


def _aggregate_scores(row: dict[str, Any]) -> dict[str, float]:
    """Each candidate's aggregate ranking score under the pull's method, higher = better."""
    method = row.get("method") or "borda"
    out: dict[str, float] = {}
    for s in row.get("ranking_scores") or []:
        v = s.get("borda") if method == "borda" else s.get("mean_rank")
        if v is not None:
            out[str(s["candidate_id"])] = float(v) if method == "borda" else -float(v)
    return out


def order_of(row: dict[str, Any], order: str, allowed: set[str]) -> tuple[str, list[str], dict[str, float]]:
    """(the order used, candidate ids best first, a score per id for margins), over ``allowed`` ids.

    Rank scores are negated aggregate positions with ties sharing a position, so two candidates
    whose aggregate scores tie are 0 apart; rating scores are mean ratings.
    """
    use = order
    if use == "auto":
        use = "ranking" if row.get("ranking") else "rating"
    if use == "ranking":
        ids = [c for c in row.get("ranking") or [] if c in allowed]
        agg = _aggregate_scores(row)
        scores: dict[str, float] = {}
        position = 0
        for k, c in enumerate(ids):
            if k == 0 or agg.get(c) is None or agg.get(c) != agg.get(ids[k - 1]):
                position = k
            scores[c] = -float(position)
        return use, ids, scores
    means = {c: v for c, v in mean_ratings(row).items() if c in allowed}
    slots = [str(c["id"]) for c in row["candidates"]]
    ids = sorted(means, key=lambda c: (-means[c], slots.index(c) if c in slots else len(slots)))
    return use, ids, means


def _body(row: dict[str, Any], chat: bool, key: str, text: str) -> dict[str, Any]:
    return {"prompt": as_messages(row["prompt"]), key: [_assistant(text)]} if chat else {"prompt": row["prompt"], key: text}


def sft_rows(row: dict[str, Any], ids: list[str], source: str, chat: bool, min_rating: float, allowed: set[str]) -> list[dict[str, Any]]:
    by_id = {str(c["id"]): c for c in row["candidates"]}
    labels, means = majority_labels(row), mean_ratings(row)
    if source == "top":
        picked = ids[:1]
    elif source == "kept":
        picked = [str(c["id"]) for c in row["candidates"] if str(c["id"]) in allowed and labels.get(str(c["id"])) == "keep"]
    else:
        picked = [str(c["id"]) for c in row["candidates"] if str(c["id"]) in allowed and means.get(str(c["id"]), -1.0) >= min_rating]
    out = []
    for cid in picked:
        c = by_id[cid]
        body: dict[str, Any] = {"messages": as_messages(row["prompt"]) + [_assistant(c["text"])]} if chat else {"prompt": row["prompt"], "completion": c["text"]}
        extra = {} if source == "top" else {"rating": means.get(cid), "label": labels.get(cid)}
        out.append({**body, **provenance(row), "candidate_id": cid, "strategy": c["strategy"], **extra})
    return out


def dpo_rows(row: dict[str, Any], ids: list[str], scores: dict[str, float], used: str, chat: bool, pairs: str, min_margin: float) -> tuple[list[dict[str, Any]], int]:
    """(pairs, pairs skipped for a margin at or below ``min_margin``)."""
    by_id = {str(c["id"]): c for c in row["candidates"]}
    if len(ids) < 2:
        return [], 0
    if pairs == "top-vs-each":
        candidates = [(ids[0], r) for r in ids[1:]]
    elif pairs == "top-vs-bottom":
        candidates = [(ids[0], ids[-1])]
    else:
        candidates = [(ids[a], ids[b]) for a in range(len(ids)) for b in range(a + 1, len(ids))]
    out, skipped = [], 0
    for chosen, rejected in candidates:
        margin = scores[chosen] - scores[rejected]
        if margin <= min_margin:
            skipped += 1
            continue
        c, r = by_id[chosen], by_id[rejected]
        body = {"prompt": as_messages(row["prompt"]), "chosen": [_assistant(c["text"])], "rejected": [_assistant(r["text"])]} if chat else {"prompt": row["prompt"], "chosen": c["text"], "rejected": r["text"]}
        out.append({
            **body, **provenance(row),
            "chosen_id": chosen, "rejected_id": rejected, "chosen_strategy": c["strategy"], "rejected_strategy": r["strategy"],
            "chosen_rank": ids.index(chosen) + 1, "rejected_rank": ids.index(rejected) + 1, "margin": margin, "margin_kind": "rank" if used == "ranking" else "rating",
        })
    return out, skipped


def kto_rows(row: dict[str, Any], source: str, chat: bool, min_rating: float, max_rating: float, allowed: set[str]) -> list[dict[str, Any]]:
    labels, means = majority_labels(row), mean_ratings(row)
    use = source if source != "auto" else ("labels" if row.get("candidate_labels") else "ratings")
    out = []
    for c in row["candidates"]:
        cid = str(c["id"])
        if cid not in allowed:
            continue
        if use == "labels":
            if cid not in labels:
                continue
            good = labels[cid] == "keep"
        else:
            m = means.get(cid)
            if m is None or max_rating < m < min_rating:
                continue
            good = m >= min_rating
        out.append({**_body(row, chat, "completion", c["text"]), "label": good, **provenance(row), "candidate_id": cid, "strategy": c["strategy"], "rating": means.get(cid), "kto_from": use})
    return out
