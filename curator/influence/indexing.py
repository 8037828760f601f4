"""`curator index`: featurise rows into a gradient store, batch by batch, resumably.

Each row is encoded (response-only labels, truncated to ``max_length``), its per-example LoRA
gradient is taken (sgd or adam kind), projected with the seeded random projection (sparse JL by default), L2
normalised, and appended to the store. Rows whose id is already in the store are skipped, so
a rerun after an interruption continues where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from curator.config import IndexConfig, ProgressFn, no_progress
from curator.distributed.group import Group, Stopped, join
from curator.distributed.split import balanced_ranges
from curator.io.data import Candidate, EvalItem, load_rows
from curator.model.encoding import Encoded, encode
from curator.errors import CuratorError, CuratorRuntimeError, InputError
from curator.gradients.computer import GradientComputer
from curator.model.device import Placement
from curator.model.models import LoadedModel, load_model
from curator.gradients.projection import BLOCK_ROWS, Projector, normalize
from curator.distributed.launch import LAUNCHED_ENV
from curator.store.ranks import dead_ranks, describe_held
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
    rank: int = 0  # this process's rank in a torchrun job (rows_added: its own share)
    world: int = 1
    phases: dict[str, float] | None = None  # a job's seconds per phase on this rank: agree, plan, featurize, wait, commit


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


def index_rows(featurizer: Featurizer, rows: Sequence[Row], out: str | Path, role: str, kind: str | None = None, progress: ProgressFn = no_progress, source: str | None = None) -> IndexResult:
    """Append the gradient vectors of ``rows`` not yet in the store at ``out``; finalise the index.

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this with the same rows: each featurises
    its token-balanced share of the rows not yet stored, and rank 0 commits the job (see
    ``_fill_ranks``). Returns an ``IndexResult``: the store path, rows total/added/skipped,
    truncated rows, seconds and the search index entry (on rank 0 of a job: the whole job's).
    ``source`` names the data in the line a dead rank leaves."""
    start = time.perf_counter()
    with join(featurizer.loaded.placement.device.type) as group:
        if group.active:
            return _fill_ranks(group, featurizer, rows, Path(out), role, kind, progress, start, source)
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
    t0 = time.perf_counter()
    for lo in range(0, len(todo), bs):
        batch = todo[lo : lo + bs]
        encoded = [featurizer.encode(r) for r in batch]
        truncated += sum(e.truncated for e in encoded)
        store.append([_row_record(r, e) for r, e in zip(batch, encoded)], featurizer.vectors(encoded, kind))
        progress("index", len(rows) - len(todo) + lo + len(batch), len(rows))
    t1 = time.perf_counter()
    if todo or search_changed or not store.manifest.get("complete"):
        store.finalize()
    phases = {"featurize": t1 - t0, "commit": time.perf_counter() - t1}
    return IndexResult(store.path, role, store.n_rows, len(todo), len(rows) - len(todo), truncated, time.perf_counter() - start, store.manifest.get("index"), phases=phases)


def _open_job(out: Path, identity: dict[str, Any], search: str | None) -> tuple[GradientStore, int]:
    """Rank 0: take the job's one writer lock, fold what a killed job left, number this job."""
    store = GradientStore.create_or_resume(out, identity)
    try:
        store.request_search(search)
        return store, store.new_job()
    except BaseException:
        store.close()
        raise


def _fill_ranks(group: Group, featurizer: Featurizer, rows: Sequence[Row], out: Path, role: str, kind: str | None, progress: ProgressFn, start: float, source: str | None) -> IndexResult:
    """One rank's part of a torchrun job writing one store (see curator.store.ranks).

    1. The ranks check they were given the same settings and rows, before anything is written.
    2. Rank 0 takes the writer lock, folds a killed job's commits into the manifest, and numbers
       the job; an error there stops every rank.
    3. Every rank splits the rows not yet stored into contiguous, token-balanced shares, the same
       split on every rank, and commits its share batch by batch to its own journal.
    4. After a barrier, rank 0 folds the journals into the manifest in rank order (the row order
       one process would have written), rolls parts up and builds the search index.
    """
    identity = featurizer.identity(role, kind)
    settings = {**asdict(featurizer.config), "identity": {k: v for k, v in identity.items() if k != "gradient"}, "gradient": {k: v for k, v in identity["gradient"].items() if k != "device"},
                "role": role, "kind": kind, "rows": hashlib.sha256("\n".join(r.id for r in rows).encode()).hexdigest(), "n_rows": len(rows)}
    marks = [time.perf_counter()]
    group.agree("settings", settings)
    marks.append(time.perf_counter())
    opened = group.on_rank0(lambda: _open_job(out, identity, featurizer.config.search))
    store = opened[0] if opened else None
    try:
        job = group.broadcast(opened[1] if opened else None)
        view = store or GradientStore.open(out)  # after rank 0's fold: the rows already committed
        done = set(view.ids())
        todo = [(pos, r) for pos, r in enumerate(rows) if r.id not in done]
        tokens = [len(featurizer.encode(r).input_ids) for _, r in todo]  # every rank: the split is by tokens (kept: lengths only)
        lo, hi = balanced_ranges(tokens, group.world)[group.rank]
        mine = todo[lo:hi]
        held = {"rows": len(mine), "first": mine[0][0] + 1 if mine else None, "last": mine[-1][0] + 1 if mine else None, "source": source, "host": socket.gethostname(), "pid": os.getpid()}
        writer = view.rank_writer(job, group.rank, held)
        marks.append(time.perf_counter())
        try:
            truncated = _fill_share(group, featurizer, mine, writer, kind, progress)
            marks.append(time.perf_counter())
            group.barrier()
            marks.append(time.perf_counter())
            truncated = sum(group.gather(truncated))  # the job's, as one process would count them
        except Stopped:
            _name_the_dead(out, job, group)
            raise
        except RuntimeError as exc:  # a collective that lost a peer (gloo: connection closed)
            _name_the_dead(out, job, group)
            raise CuratorRuntimeError(f"rank {group.rank} of {group.world}: another rank stopped answering at the end of the job ({type(exc).__name__}): rerun the same command, with any number of ranks, to resume from the committed rows") from exc
        entry = None
        if store is not None:
            store.fold_journals()
            entry = store.manifest.get("index") if store.manifest.get("complete") else store.finalize()
        marks.append(time.perf_counter())
        phases = dict(zip(("agree", "plan", "featurize", "wait", "commit"), (b - a for a, b in zip(marks, marks[1:]))))
        n_total = store.n_rows if store is not None else len(done) + len(todo)
        return IndexResult(out, role, n_total, len(todo) if store is not None else len(mine), len(rows) - len(todo), truncated, time.perf_counter() - start, entry, group.rank, group.world, phases)
    finally:
        if store is not None:
            store.close()


def _name_the_dead(out: Path, job: int, group: Group) -> None:
    """Rank 0, stopped by torchrun because a rank failed: name a rank of this node that died without
    a word (a signal, the OOM killer), and the rows it held. ``curator index --nproc`` names it itself."""
    if not group.is_main or os.environ.get(LAUNCHED_ENV):
        return
    for rank, held in dead_ranks(out, job, socket.gethostname()):
        if rank != group.rank:
            raise CuratorRuntimeError(f"rank {rank} of {group.world} died holding {held}: rerun the same command, with any number of ranks, to resume from the committed rows")


def _fill_share(group: Group, featurizer: Featurizer, mine: list[tuple[int, Row]], writer: GradientStore, kind: str | None, progress: ProgressFn) -> int:
    """Commit one rank's share batch by batch; the number of truncated rows. A failure names the
    rank and the rows it held."""
    bs = featurizer.config.batch_size
    stage = f"index (rank {group.rank} of {group.world})"
    progress(stage, 0, len(mine))
    truncated = 0
    try:
        for lo in range(0, len(mine), bs):
            batch = [r for _, r in mine[lo : lo + bs]]
            enc = [featurizer.encode(r) for r in batch]
            truncated += sum(e.truncated for e in enc)
            writer.append([_row_record(r, e) for r, e in zip(batch, enc)], featurizer.vectors(enc, kind))
            progress(stage, lo + len(batch), len(mine))
    except Stopped:
        raise
    except (CuratorError, RuntimeError, OSError, ValueError) as exc:
        raise CuratorRuntimeError(f"rank {group.rank} of {group.world} failed holding {describe_held(writer.manifest)}: {exc}: rerun the same command, with any number of ranks, to resume from the committed rows") from exc
    return truncated


def index_file(data: str | Path, out: str | Path, config: IndexConfig, role: str = "auto", progress: ProgressFn = no_progress, featurizer: Featurizer | None = None) -> IndexResult:
    """Load ``data``, then featurise it into the store at ``out`` (see ``index_rows``).

    ``role`` is candidates, eval or auto (candidates when every row has a strategy). Returns an
    ``IndexResult``; a rerun adds only rows not yet in the store.
    """
    role, rows = load_rows(data, role)
    featurizer = featurizer or Featurizer(config)
    return index_rows(featurizer, rows, out, role, progress=progress, source=Path(data).name)
