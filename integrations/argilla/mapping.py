"""Candidates ↔ an Argilla dataset: one record per prompt group, its suggestions, and back.

The dataset's settings (fields, the questions that fit the data, metadata, vectors) are in
``curator.integrations.argilla.schema``; their names are re-exported here.

**Suggestions**, from the ranking table (``curator rank``): the ranking in curator's order and the
strategy of its top candidate; per candidate, a rating (the combined score's logistic, cut into
fifths: 1-5) and keep/drop (keep at a combined score >= the spec's ``keep_threshold``). Every
suggestion score is the combined score's logistic, in [0, 1] as the server requires.

**Slot → candidate.** A group's candidates fill the slots in the order of the dataset's strategy
labels (then by id), so a strategy keeps its slot from record to record. The candidate id of each
slot is kept in the record's hidden terms metadata ``candidate_id_i``; pull reads the mapping from
there. The record id is a content hash of the prompt and the candidate ids *in slot order*, so a
re-push of the same group updates the record in place, and a group whose slots would change gets
a new record instead of silently re-labelling the rankings annotators already gave.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Iterable

import numpy as np
import pandas as pd

from curator import __version__
from curator.io.data import Candidate, content_hash
from curator.errors import InputError
from curator.integrations.argilla.schema import (  # noqa: F401  (re-exported: the names callers import from here)
    BEST, COMMENT, KEEP, KEEP_LABELS, MAX_NAME, MAX_VECTOR_DIM, PROMPT, RANKING, RATING, RATING_VALUES, SLOT, SLOT_FLOATS, VECTOR,
    DatasetMismatchError, DatasetSpec, check_compatible, check_name, describe, guidelines, keep_q, n_slots_of,
    questions_of, rating_q, settings_for, slot, spec_for,
)

AGENT = f"curator/{__version__}"
EMPTY_SLOT = "_(empty slot: this prompt has fewer candidates than the others; rank it last, leave it unrated)_"


# --------------------------------------------------------------------------- vectors


@lru_cache(maxsize=4)
def _signs(seed: int, n_in: int, n_out: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, n_in, n_out])))
    return (rng.integers(0, 2, size=(n_in, n_out), dtype=np.int8) * 2 - 1).astype(np.float32)


def reduce_vector(vec: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """Seeded Rademacher projection (±1/√dim) of ``vec`` to ``dim`` dims, L2-normalised.

    A vector of ``dim`` or fewer dims is only normalised. A zero vector stays zero.
    """
    v = np.asarray(vec, dtype=np.float32).ravel()
    if v.size > dim:
        v = (v @ _signs(seed, v.size, dim)) / np.float32(math.sqrt(dim))
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def group_vectors(groups: dict[str, list[Candidate]], store: Any, dim: int, seed: int = 0) -> dict[str, list[float]]:
    """group → the mean of its candidates' store vectors, reduced to ``dim`` and normalised."""
    role = store.manifest.get("role")
    if role not in (None, "candidates"):
        raise InputError(f"{store.path}: a gradient store of {role} rows: pass the store built from the candidates (curator index CANDIDATES)")
    ids = store.ids()
    row = {cid: k for k, cid in enumerate(ids)}
    wanted = [c.id for cs in groups.values() for c in cs]
    missing = [cid for cid in wanted if cid not in row]
    if missing:
        raise InputError(f"{store.path}: {len(missing)} of {len(wanted)} candidates are not in the gradient store (e.g. {missing[0]!r}): index the same candidates file with `curator index`")
    vecs = store.vectors()
    out = {}
    for g, cs in groups.items():
        mean = vecs[[row[c.id] for c in cs]].mean(axis=0)
        v = reduce_vector(mean, dim, seed)
        if np.linalg.norm(v) > 0:
            out[g] = [float(x) for x in v]
    return out


# --------------------------------------------------------------------------- records


def _ranking_table(ranking: pd.DataFrame | None, candidates: list[Candidate]) -> dict[str, dict[str, Any]]:
    if ranking is None:
        return {}
    if not isinstance(ranking, pd.DataFrame) or "id" not in ranking.columns or "rank" not in ranking.columns:
        raise InputError("ranking table: expected the table `curator rank` writes (columns id, rank, score, alignment, influence)")
    table = {str(r["id"]): r for r in ranking.to_dict(orient="records")}
    missing = [c.id for c in candidates if c.id not in table]
    if missing:
        raise InputError(f"ranking table: {len(missing)} of {len(candidates)} candidates have no ranking (e.g. {missing[0]!r}): rank the same candidates file")
    return table


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def suggestion_score(x: float | None) -> float:
    """A combined score mapped into [0, 1] (the server only takes suggestion scores there)."""
    return 0.5 if x is None else 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def suggested_rating(x: float) -> int:
    """A combined score as a 1-5 rating: its logistic cut into fifths (cuts at ±0.405 and ±1.386; 0 → 3)."""
    return min(5, 1 + int(5 * suggestion_score(x)))


def group_candidates(candidates: list[Candidate]) -> dict[str, list[Candidate]]:
    """Candidates by group, in order of first appearance; a group's prompts must agree."""
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        members = groups.setdefault(c.group, [])
        if members and members[0].prompt != c.prompt:
            raise InputError(f"group {c.group!r}: candidates {members[0].id!r} and {c.id!r} have different prompts: one group is one prompt")
        members.append(c)
    return groups


def record_id(prompt: Any, candidate_ids: list[str]) -> str:
    """The record's id: a content hash of the prompt and the candidate ids in slot order."""
    return "cur-" + content_hash(prompt, candidate_ids, length=32)


def plan_records(
    candidates: list[Candidate],
    spec: DatasetSpec,
    ranking: pd.DataFrame | None = None,
    vectors: dict[str, list[float]] | None = None,
    fingerprint: str | None = None,
) -> list[dict[str, Any]]:
    """One plain record dict per group: id, fields, metadata, suggestions, vectors (see module doc)."""
    table = _ranking_table(ranking, candidates)
    order = {s: k for k, s in enumerate(spec.strategies)}
    out = []
    for g, members in group_candidates(candidates).items():
        if len(members) > spec.n_slots:
            raise InputError(f"group {g!r} has {len(members)} candidates, the dataset has {spec.n_slots} slots: push to a new --dataset name")
        members = sorted(members, key=lambda c: (order.get(c.strategy, len(order)), c.id))
        prompt = members[0].prompt
        if spec.chat and isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        fields: dict[str, Any] = {PROMPT: prompt}
        meta: dict[str, Any] = {"group": g}
        task = next((c.task for c in members if c.task), None)
        if task:
            meta["task"] = task
        if fingerprint:
            meta["model_fingerprint"] = fingerprint
        for i in range(1, spec.n_slots + 1):
            fields[slot(i)] = members[i - 1].response if i <= len(members) else EMPTY_SLOT
        for i, c in enumerate(members, start=1):
            meta[f"candidate_id_{i}"] = c.id
            meta[f"strategy_{i}"] = c.strategy
            for k in SLOT_FLOATS:
                v = _finite(table.get(c.id, {}).get(k))
                if v is not None:
                    meta[f"{k}_{i}"] = v
        suggestions = []
        if table:
            ranked = sorted(range(len(members)), key=lambda k: (table[members[k].id]["rank"], members[k].id))
            slots = [slot(k + 1) for k in ranked] + [slot(i) for i in range(len(members) + 1, spec.n_slots + 1)]
            scores = [suggestion_score(_finite(table[members[k].id].get("score"))) for k in ranked] + [0.0] * (spec.n_slots - len(members))
            best = members[ranked[0]]
            meta["predicted_best_strategy"] = best.strategy
            if spec.ranks:
                suggestions += [
                    {"question_name": RANKING, "value": slots, "score": scores, "agent": AGENT},
                    {"question_name": BEST, "value": best.strategy, "score": scores[0], "agent": AGENT},
                ]
            if spec.rates:
                for i, c in enumerate(members, start=1):
                    combined = _finite(table[c.id].get("score"))
                    if combined is None:
                        continue
                    p = suggestion_score(combined)
                    suggestions.append({"question_name": rating_q(i), "value": suggested_rating(combined), "score": p, "agent": AGENT})
                    suggestions.append({"question_name": keep_q(i), "value": "keep" if combined >= spec.keep_threshold else "drop", "score": p, "agent": AGENT})
        rec = {"id": record_id(members[0].prompt, [c.id for c in members]), "fields": fields, "metadata": meta, "suggestions": suggestions}
        if vectors and g in vectors:
            rec["vectors"] = {VECTOR: vectors[g]}
        out.append(rec)
    return out


def to_record(plan: dict[str, Any]) -> Any:
    """An ``rg.Record`` from a planned record dict."""
    import argilla as rg

    suggestions = [rg.Suggestion(s["question_name"], s["value"], score=s.get("score"), agent=s.get("agent"), type="model") for s in plan["suggestions"]]
    return rg.Record(id=plan["id"], fields=plan["fields"], metadata=plan["metadata"], vectors=plan.get("vectors") or None, suggestions=suggestions)


def slot_candidates(metadata: dict[str, Any], n_slots: int) -> dict[str, str]:
    """slot → candidate id from a record's metadata (slots without a candidate are left out)."""
    return {slot(i): str(metadata[f"candidate_id_{i}"]) for i in range(1, n_slots + 1) if metadata.get(f"candidate_id_{i}") not in (None, "")}


def strategies_in(candidates: Iterable[Candidate]) -> list[str]:
    return list(dict.fromkeys(c.strategy for c in candidates))
