"""Influence by similarity search over gradient stores.

A candidate's influence on an eval task is its mean cosine to that task's eval vectors. Since
every vector is unit-norm, that mean equals the inner product with the task's centroid (the mean
of its normalised eval vectors, not renormalised), so one FAISS search per task scores every
candidate. Several checkpoints combine as an lr-weighted sum (LESS); the weights are normalised
to sum to 1 so the scores stay on the cosine scale (rankings are unchanged by that constant).
The weighted sum over checkpoints equals one inner product between concatenated vectors, each
checkpoint's block scaled by sqrt(weight), which is how several stores are searched at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from curator.errors import InputError, MismatchError
from curator.store import COMPARABLE_FIELDS, GradientStore, compare_manifests

INFLUENCE_PREFIX = "influence:"


@dataclass
class ScoringSpace:
    """Train rows, their searchable index, and eval vectors in the same (possibly combined) space."""

    train_rows: pd.DataFrame
    eval_rows: pd.DataFrame
    index: Any
    eval_vectors: np.ndarray
    weights: list[float]


def _pair(train: list[GradientStore], evals: list[GradientStore]) -> list[tuple[GradientStore, GradientStore]]:
    """Match each train store with the eval store of the same checkpoint."""
    if len(train) != len(evals):
        raise InputError(f"{len(train)} train store(s) but {len(evals)} eval store(s): pass one eval store per checkpoint, in pairs")
    by_ckpt: dict[str, GradientStore] = {}
    for e in evals:
        key = repr(e.manifest["gradient"].get("checkpoint"))
        if key in by_ckpt:
            raise InputError(f"{e.path}: two eval stores for the same checkpoint ({by_ckpt[key].path}): pass each checkpoint once")
        by_ckpt[key] = e
    pairs = []
    for t in train:
        key = repr(t.manifest["gradient"].get("checkpoint"))
        if key not in by_ckpt:
            if len(train) == 1:
                compare_manifests(t.manifest, evals[0].manifest, ["gradient.checkpoint"], f"train store {t.path}", f"eval store {evals[0].path}")
            raise MismatchError(f"train store {t.path} has checkpoint {key} with no eval store of the same checkpoint: index the eval set at that checkpoint too")
        pairs.append((t, by_ckpt[key]))
    return pairs


def _check_role(store: GradientStore, role: str, flag: str) -> None:
    if store.manifest.get("role") != role:
        raise InputError(f"{store.path}: a store of {store.manifest.get('role')} rows was passed to {flag}: pass a store built from {role} rows")
    if store.n_rows == 0:
        raise InputError(f"{store.path}: the store is empty: run `curator index` to fill it")


def open_space(train_paths: Sequence[str | Path], eval_paths: Sequence[str | Path]) -> ScoringSpace:
    """Open and check train/eval stores, and build the space candidates are scored in."""
    if not train_paths or not eval_paths:
        raise InputError("influence needs at least one --train store and one --eval store")
    train = [GradientStore.open(p) for p in train_paths]
    evals = [GradientStore.open(p) for p in eval_paths]
    for s in train:
        _check_role(s, "candidates", "--train")
    for s in evals:
        _check_role(s, "eval", "--eval")
    pairs = _pair(train, evals)
    for t, e in pairs:
        compare_manifests(t.manifest, e.manifest, COMPARABLE_FIELDS, f"train store {t.path}", f"eval store {e.path}")
    train_rows, eval_rows = pairs[0][0].rows(), pairs[0][1].rows()
    for t, e in pairs[1:]:
        if t.ids() != list(train_rows["id"]):
            raise MismatchError(f"train stores {pairs[0][0].path} and {t.path} hold different rows: index the same data at every checkpoint")
        if e.ids() != list(eval_rows["id"]):
            raise MismatchError(f"eval stores {pairs[0][1].path} and {e.path} hold different rows: index the same eval data at every checkpoint")
    lrs = np.array([t.lr_weight for t, _ in pairs], dtype=np.float64)
    weights = list(lrs / lrs.sum())
    if len(pairs) == 1:
        return ScoringSpace(train_rows, eval_rows, pairs[0][0].index(), pairs[0][1].vectors(), weights)
    import faiss

    scale = [np.float32(np.sqrt(w)) for w in weights]
    x = np.hstack([t.vectors() * s for (t, _), s in zip(pairs, scale)]).astype(np.float32)
    e = np.hstack([ev.vectors() * s for (_, ev), s in zip(pairs, scale)]).astype(np.float32)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    return ScoringSpace(train_rows, eval_rows, index, e, weights)


def task_centroids(space: ScoringSpace) -> tuple[list[str], np.ndarray]:
    """Eval tasks (sorted) and the mean of each task's eval vectors, [n_tasks, dim]."""
    tasks = sorted(str(t) for t in space.eval_rows["task"].unique())
    task_col = space.eval_rows["task"].astype(str).to_numpy()
    cents = np.stack([space.eval_vectors[task_col == t].mean(axis=0) for t in tasks]).astype(np.float32)
    return tasks, cents


def _search_all(index: Any, queries: np.ndarray, n: int) -> np.ndarray:
    """Scores of every indexed row for each query, [n_queries, n], in row order."""
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), n)
    out = np.zeros((queries.shape[0], n), dtype=np.float32)
    np.put_along_axis(out, ids, scores, axis=1)
    return out


def influence_scores(space: ScoringSpace) -> pd.DataFrame:
    """One row per candidate: id, strategy, task, group, influence:<task>..., influence_max, influence_mean."""
    tasks, cents = task_centroids(space)
    n = len(space.train_rows)
    scores = _search_all(space.index, cents, n)  # [n_tasks, n]
    df = space.train_rows[["id", "strategy", "task", "group"]].copy().reset_index(drop=True)
    for i, t in enumerate(tasks):
        df[f"{INFLUENCE_PREFIX}{t}"] = scores[i].astype(np.float64)
    df["influence_max"] = scores.max(axis=0).astype(np.float64)
    df["influence_mean"] = scores.mean(axis=0).astype(np.float64)
    return df


def top_k(space: ScoringSpace, k: int) -> pd.DataFrame:
    """The k most influential candidates for each eval item: eval_id, eval_task, rank, id, strategy, task, group, score."""
    if k < 1:
        raise InputError(f"--top-k {k} is invalid: use an integer >= 1")
    k = min(k, len(space.train_rows))
    scores, ids = space.index.search(np.ascontiguousarray(space.eval_vectors, dtype=np.float32), k)
    tr = space.train_rows
    records = []
    for e in range(len(space.eval_rows)):
        for rank in range(k):
            row = tr.iloc[int(ids[e, rank])]
            records.append({
                "eval_id": space.eval_rows["id"].iloc[e],
                "eval_task": space.eval_rows["task"].iloc[e],
                "rank": rank + 1,
                "id": row["id"],
                "strategy": row["strategy"],
                "task": row["task"],
                "group": row["group"],
                "score": float(scores[e, rank]),
            })
    return pd.DataFrame.from_records(records)
