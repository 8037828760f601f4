"""Exact scans over gradient stores: the float16 parts, converted to float32 a chunk at a time.

The parts are memory-mapped one at a time and read in row order; a chunk (~8 MiB of float32) is
converted from float16, and several stores of the same rows (one per checkpoint) are laid side by
side in it, each block scaled by sqrt(its weight). ``exact_scores`` is every row against a few
queries (task centroids) as one float32 matrix product per chunk: exact, and no heap.
``exact_top_k`` is FAISS inner-product search (``faiss.knn``) per chunk, merged in a FAISS
``ResultHeap``. Memory stays at a few chunks whatever the store's size.

A scan reads anything shaped like a store (``VectorSource``); it never imports the store itself.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterator, Protocol, Sequence, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
CHUNK_BYTES = 8 << 20  # float32 rows converted at a time


class VectorSource(Protocol):
    """What a scan or a search reads: rows of float16 vectors held in parts (a GradientStore is one)."""

    @property
    def n_rows(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def iter_parts(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row number, float16 [rows, dim]) of each part, in row order."""
        ...

    def read_rows(self, idx: np.ndarray) -> np.ndarray:
        """The vectors of the given row numbers, float32 [len(idx), dim], in the order given."""
        ...


class _Cursor:
    """Walks one store's rows in order, one memory-mapped part at a time."""

    def __init__(self, store: VectorSource) -> None:
        self.parts = store.iter_parts()
        self.arr: np.ndarray | None = None
        self.pos = 0

    def take(self, r: int) -> list[tuple[int, np.ndarray]]:
        """The next ``r`` rows as (offset in the chunk, float16 view) pieces, crossing parts."""
        pieces, done = [], 0
        while done < r:
            if self.arr is None or self.pos >= self.arr.shape[0]:
                self.arr, self.pos = next(self.parts)[1], 0
            n = min(r - done, self.arr.shape[0] - self.pos)
            pieces.append((done, self.arr[self.pos : self.pos + n]))
            done += n
            self.pos += n
        return pieces


Pieces = list[list[tuple[int, np.ndarray]]]


def _plan_chunks(stores: Sequence[VectorSource], chunk_bytes: int) -> tuple[int, int, Iterator[tuple[int, int, Pieces]]]:
    """(rows per chunk, width, iterator of (first row, rows, float16 pieces per store))."""
    n = stores[0].n_rows
    if any(s.n_rows != n for s in stores):
        raise ValueError("stores scanned together must hold the same rows")
    width = sum(s.dim for s in stores)
    rows = max(1, min(n, chunk_bytes // (4 * width)))
    cursors = [_Cursor(s) for s in stores]

    def chunks() -> Iterator[tuple[int, int, Pieces]]:
        for lo in range(0, n, rows):
            r = min(rows, n - lo)
            yield lo, r, [c.take(r) for c in cursors]

    return rows, width, chunks()


def _fill(buf: "torch.Tensor", pieces: Pieces, dims: Sequence[int], scales: Sequence[float]) -> None:
    """Convert float16 pieces into float32 ``buf`` side by side, each store's block scaled."""
    import torch

    off = 0
    for store_pieces, d, scale in zip(pieces, dims, scales):
        for dst, view in store_pieces:
            buf[dst : dst + view.shape[0], off : off + d].copy_(torch.from_numpy(view))
        if scale != 1.0:
            buf[:, off : off + d].mul_(float(np.float32(scale)))
        off += d


def scan(stores: Sequence[VectorSource], scales: Sequence[float], chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, "torch.Tensor"]]:
    """(first row, float32 [rows, sum of dims]) chunks of the same rows across ``stores``, in order.

    Store j's block is multiplied by ``scales[j]`` (sqrt of its checkpoint weight), so one inner
    product over a chunk row is the weighted sum over checkpoints. The buffer is reused: use each
    chunk before asking for the next.
    """
    import torch

    rows, width, chunks = _plan_chunks(stores, chunk_bytes)
    buf = torch.empty((rows, width), dtype=torch.float32)
    dims = [s.dim for s in stores]
    for lo, r, pieces in chunks:
        _fill(buf[:r], pieces, dims, scales)
        yield lo, buf[:r]


def _parallel_scan(stores: Sequence[VectorSource], scales: Sequence[float], work: Callable[[int, "torch.Tensor"], T]) -> Iterator[T]:
    """``work(first row, float32 chunk)`` over every chunk on a few threads; results in row order.

    Each worker runs its torch/FAISS calls single-threaded and takes whole chunks: on a busy
    machine, per-operation thread barriers cost far more than they give (measured: 2-thread
    torch ops were ~10x slower than 1 thread under a load of 5 on 2 cores). The global thread
    settings are restored afterwards.
    """
    import faiss
    import torch

    rows, width, chunks = _plan_chunks(stores, CHUNK_BYTES)
    dims = [s.dim for s in stores]
    workers = max(1, min(4, os.cpu_count() or 1))
    local = threading.local()

    def job(lo: int, r: int, pieces: Pieces) -> T:
        if not hasattr(local, "buf"):
            torch.set_num_threads(1)
            faiss.omp_set_num_threads(1)
            local.buf = torch.empty((rows, width), dtype=torch.float32)
        buf = local.buf[:r]
        _fill(buf, pieces, dims, scales)
        return work(lo, buf)

    prev_torch, prev_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: deque[Future[T]] = deque()
            for lo, r, pieces in chunks:
                pending.append(pool.submit(job, lo, r, pieces))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        torch.set_num_threads(prev_torch)
        faiss.omp_set_num_threads(prev_faiss)


def exact_scores(stores: Sequence[VectorSource], scales: Sequence[float], queries: np.ndarray) -> np.ndarray:
    """Inner products of every row with every query, float32 [n_queries, n_rows], exactly."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    out = torch.empty((q.shape[0], stores[0].n_rows), dtype=torch.float32)

    def work(lo: int, chunk: "torch.Tensor") -> None:
        torch.mm(q, chunk.T, out=out[:, lo : lo + chunk.shape[0]])

    for _ in _parallel_scan(stores, scales, work):
        pass
    return out.numpy()


def exact_top_k(stores: Sequence[VectorSource], scales: Sequence[float], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest inner products per query and their row numbers, by FAISS over each chunk."""
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(q.shape[0], k, keep_max=True)

    def work(lo: int, chunk: "torch.Tensor") -> tuple[np.ndarray, np.ndarray]:
        d, i = faiss.knn(q, chunk.numpy(), min(k, chunk.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
        return d, i + lo

    for d, i in _parallel_scan(stores, scales, work):
        heap.add_result(d, i)
    heap.finalize()
    return heap.D, heap.I
