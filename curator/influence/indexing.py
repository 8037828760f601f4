"""`curator index`: featurise rows into a gradient store, batch by batch, resumably.

Each row is encoded (response-only labels, truncated to ``max_length``), its per-example LoRA
gradient is taken (sgd or adam kind), projected with the seeded random projection (sparse JL by default), L2
normalised, and appended to the store. Rows whose id is already in the store are skipped, so
a rerun after an interruption continues where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from curator.config import IndexConfig, ProgressFn, no_progress
from curator.io.data import Candidate, EvalItem, load_rows
from curator.model.encoding import Encoded, encode
from curator.errors import InputError
from curator.gradients.computer import GradientComputer
from curator.model.device import Placement
from curator.model.models import LoadedModel, load_model
from curator.gradients.projection import BLOCK_ROWS, Projector, normalize
from curator.store.store import GradientStore

Row = Union[Candidate, EvalItem]


@dataclass(frozen=True)
class IndexResult:
    store: Path
    role: str
    rows_total: int
    rows_added: int
    rows_skipped: int
    truncated: int
    seconds: float
    index: dict[str, Any] | None = None  # the store's search index entry (type, params, fallback)


class Featurizer:
    """Model + LoRA (+ checkpoint) + projection: turns encoded examples into unit vectors."""

    def __init__(self, config: IndexConfig, loaded: LoadedModel | None = None) -> None:
        self.config = config
        self.loaded = loaded or load_model(config.model, config.device)
        self.computer = GradientComputer(self.loaded.model, config.lora, config.gradient.checkpoint, config.gradient.adam_eps, self.loaded.fingerprint)
        self.projector = Projector(config.projection, self.computer.n_params)
        self.dtype = compute_dtype(config.gradient.dtype, self.loaded.placement)

    def identity(self, role: str, kind: str | None = None) -> dict[str, Any]:
        """The manifest fields that define the vectors this featurizer makes."""
        ckpt = self.computer.checkpoint
        g = self.config.gradient
        return {
            "role": role,
            "model": {"spec": self.loaded.spec, "fingerprint": self.loaded.fingerprint},
            "lora": self.config.lora.to_dict(),
            "projection": {**self.config.projection.to_dict(), "block_rows": BLOCK_ROWS, "input_dim": self.computer.n_params},
            "gradient": {
                "kind": kind or g.kind,
                "max_length": g.max_length,
                "dtype": self.dtype,
                "device": self.loaded.placement.device.type,  # recorded, not compared (IDENTITY_FIELDS)
                "checkpoint": None if ckpt is None else {"name": Path(ckpt.path).name, "step": ckpt.step, "fingerprint": ckpt.fingerprint},
                "lr_weight": ckpt.lr if ckpt is not None else 1.0,
            },
        }

    def encode(self, row: Row) -> Encoded:
        return encode(self.loaded.tokenizer, row.prompt, row.response, self.config.gradient.max_length)

    def vectors(self, examples: list[Encoded], kind: str | None = None) -> np.ndarray:
        """Projected, L2-normalised per-example gradients, float32 [n, dim]."""
        g = self.config.gradient
        grads = self.computer.gradients(examples, kind or g.kind, dtype=self.dtype, tokens_per_batch=g.tokens_per_batch, attention=self.loaded.placement.attn_implementation, gradient_checkpointing=g.gradient_checkpointing)
        return normalize(self.projector.project(grads))  # projected on the device; only [n, dim] comes back


def compute_dtype(requested: str, placement: Placement) -> str:
    """The dtype the gradients are taken in: the model's compute dtype, unless a narrower one is
    asked for on fp32 weights (bf16 autocast on the CPU). Refuses a dtype wider than the weights."""
    if requested in ("auto", placement.dtype):
        return placement.dtype
    if placement.weights_dtype != torch.float32:
        raise InputError(f"gradient dtype {requested} on a model loaded in {placement.dtype} on {placement.device}: load it with --dtype {requested}, or leave the gradient dtype to auto")
    if requested == "fp16" and placement.device.type == "cpu":
        raise InputError("--dtype fp16 runs on a GPU only: use bf16 or fp32 on the CPU")
    return requested


def _row_record(row: Row, enc: Encoded) -> dict[str, Any]:
    return {
        "id": row.id,
        "strategy": getattr(row, "strategy", None),
        "task": row.task,
        "group": getattr(row, "group", None),
        "n_prompt_tokens": enc.n_prompt,
        "n_response_tokens": enc.n_response,
        "truncated": enc.truncated,
    }


def index_rows(featurizer: Featurizer, rows: Sequence[Row], out: str | Path, role: str, kind: str | None = None, progress: ProgressFn = no_progress) -> IndexResult:
    """Append the gradient vectors of ``rows`` not yet in the store at ``out``; finalise the index.

    Returns an ``IndexResult``: the store path, rows total/added/skipped, truncated rows, seconds
    and the search index entry."""
    start = time.perf_counter()
    store = GradientStore.create_or_resume(out, featurizer.identity(role, kind))  # takes the writer lock
    try:
        return _fill(store, featurizer, rows, role, kind, progress, start)
    finally:
        store.close()


def _fill(store: GradientStore, featurizer: Featurizer, rows: Sequence[Row], role: str, kind: str | None, progress: ProgressFn, start: float) -> IndexResult:
    search_changed = store.request_search(featurizer.config.search)
    done = set(store.ids())
    todo = [r for r in rows if r.id not in done]
    truncated = 0
    bs = featurizer.config.batch_size
    progress("index", len(rows) - len(todo), len(rows))
    for lo in range(0, len(todo), bs):
        batch = todo[lo : lo + bs]
        encoded = [featurizer.encode(r) for r in batch]
        truncated += sum(e.truncated for e in encoded)
        store.append([_row_record(r, e) for r, e in zip(batch, encoded)], featurizer.vectors(encoded, kind))
        progress("index", len(rows) - len(todo) + lo + len(batch), len(rows))
    if todo or search_changed or not store.manifest.get("complete"):
        store.finalize()
    return IndexResult(store.path, role, store.n_rows, len(todo), len(rows) - len(todo), truncated, time.perf_counter() - start, store.manifest.get("index"))


def index_file(data: str | Path, out: str | Path, config: IndexConfig, role: str = "auto", progress: ProgressFn = no_progress, featurizer: Featurizer | None = None) -> IndexResult:
    """Load ``data``, then featurise it into the store at ``out`` (see ``index_rows``).

    ``role`` is candidates, eval or auto (candidates when every row has a strategy). Returns an
    ``IndexResult``; a rerun adds only rows not yet in the store.
    """
    role, rows = load_rows(data, role)
    featurizer = featurizer or Featurizer(config)
    return index_rows(featurizer, rows, out, role, progress=progress)
