"""Influence by similarity search over gradient stores.

A candidate's influence on an eval task is its mean cosine to that task's eval vectors. Since
every vector is unit-norm, that mean equals the inner product with the task's centroid (the mean
of its normalised eval vectors, not renormalised), so one FAISS search per task scores every
candidate. Several checkpoints combine as an lr-weighted sum (LESS); the weights are normalised
to sum to 1 so the scores stay on the cosine scale (rankings are unchanged by that constant).
The weighted sum over checkpoints equals one inner product between concatenated vectors, each
checkpoint's block scaled by sqrt(weight), which is how several stores are searched at once.

Centroid scores are always exact: every candidate against every task centroid, as one matrix
product over chunks of the memory-mapped stored vectors (curator.store.scan), never a k=N heap
search and never all vectors in memory. ``top_k`` uses the train store's search index: exact
FAISS search by default, or the approximate index chosen with ``curator index --search``
(single checkpoint only; several checkpoints are always searched exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from curator.store import scan, search
from curator.errors import InputError, MismatchError
from curator.store.identity import COMPARABLE_FIELDS, compare_manifests
from curator.store.store import GradientStore

INFLUENCE_PREFIX = "influence:"


@dataclass
class ScoringSpace:
    """Train rows and stores (one per checkpoint), and eval vectors in the same (possibly combined) space.

    ``eval_vectors`` is [n_eval, sum of dims]: with several checkpoints, each checkpoint's block is
    scaled by sqrt(weight), and the train stores are read with the same scales.
    """

    train_rows: pd.DataFrame
    eval_rows: pd.DataFrame
    train: list[GradientStore]
    eval_vectors: np.ndarray
    weights: list[float]

    @property
    def scales(self) -> list[float]:
        return [1.0] if len(self.train) == 1 else [float(np.float32(np.sqrt(w))) for w in self.weights]

    def searcher(self) -> Any:
        """Top-k search over the train vectors: ``.search(queries, k) -> (scores, row numbers)``."""
        if len(self.train) == 1:
            return self.train[0].index()
        return search.ExactSearcher(self.train, self.scales)


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
    """Open and check train/eval stores, and build the space candidates are scored in.

    Returns a ``ScoringSpace`` for ``influence_scores`` and ``top_k``; stores made with different
    models, LoRA, projections or checkpoints are refused with a MismatchError."""
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
    for t, _ in pairs:
        t.verify()  # every train part's checksum, streamed, before any score is computed
    if len(pairs) == 1:
        return ScoringSpace(train_rows, eval_rows, [pairs[0][0]], pairs[0][1].vectors(), weights)
    scale = [np.float32(np.sqrt(w)) for w in weights]
    e = np.hstack([ev.vectors() * s for (_, ev), s in zip(pairs, scale)]).astype(np.float32)
    return ScoringSpace(train_rows, eval_rows, [t for t, _ in pairs], e, weights)


def task_centroids(space: ScoringSpace) -> tuple[list[str], np.ndarray]:
    """Eval tasks (sorted) and the mean of each task's eval vectors, [n_tasks, dim]."""
    tasks = sorted(str(t) for t in space.eval_rows["task"].unique())
    task_col = space.eval_rows["task"].astype(str).to_numpy()
    cents = np.stack([space.eval_vectors[task_col == t].mean(axis=0) for t in tasks]).astype(np.float32)
    return tasks, cents


def influence_scores(space: ScoringSpace) -> pd.DataFrame:
    """Every candidate's influence on each eval task: its cosine to the task's mean eval vector.

    Returns a DataFrame, one row per candidate: id, strategy, task, group, influence:<task>...,
    influence_max, influence_mean.
    """
    tasks, cents = task_centroids(space)
    scores = scan.exact_scores(space.train, space.scales, cents)  # [n_tasks, n], exact
    df = space.train_rows[["id", "strategy", "task", "group"]].copy().reset_index(drop=True)
    for i, t in enumerate(tasks):
        df[f"{INFLUENCE_PREFIX}{t}"] = scores[i].astype(np.float64)
    df["influence_max"] = scores.max(axis=0).astype(np.float64)
    df["influence_mean"] = scores.mean(axis=0).astype(np.float64)
    return df


def top_k(space: ScoringSpace, k: int) -> pd.DataFrame:
    """The k most influential candidates for each eval item.

    Returns a DataFrame with columns eval_id, eval_task, rank, id, strategy, task, group, score.

    With an approximate index an item may get fewer than k rows when the index finds fewer.
    """
    if k < 1:
        raise InputError(f"--top-k {k} is invalid: use an integer >= 1")
    k = min(k, len(space.train_rows))
    scores, ids = space.searcher().search(space.eval_vectors, k)
    tr = space.train_rows.reset_index(drop=True)
    ev = space.eval_rows.reset_index(drop=True)
    e_idx, rank = np.nonzero(ids >= 0)
    rows = ids[e_idx, rank]
    out = pd.DataFrame({
        "eval_id": ev["id"].to_numpy()[e_idx],
        "eval_task": ev["task"].to_numpy()[e_idx],
        "rank": rank + 1,
        "id": tr["id"].to_numpy()[rows],
        "strategy": tr["strategy"].to_numpy()[rows],
        "task": tr["task"].to_numpy()[rows],
        "group": tr["group"].to_numpy()[rows],
        "score": scores[e_idx, rank].astype(np.float64),
    })
    return out
