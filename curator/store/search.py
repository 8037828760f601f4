"""Search over gradient stores: exact by default, an approximate FAISS index on request.

Exact (``flat``, the default): the store's float16 vector parts are the index; no second copy is
written. Exact top-k is FAISS inner-product search over chunks of the memory-mapped parts
(curator.store.scan), and centroid scores are always computed exactly there too. Nothing ever holds
all the vectors as float32.

Approximate (``ivf``, ``ivfpq``, ``hnsw``): a FAISS IndexIVFFlat, IndexIVFPQ or IndexHNSWFlat with
the inner-product metric, built when ``curator index`` finalises: trained on a seeded sample of
rows, filled part by part in row order (so FAISS ids are row numbers), and streamed to disk with
``faiss.write_index``. These serve top-k per eval item of a single store; centroid scores always
come exactly from the parts, and several checkpoints are always searched exactly.

A type is written ``TYPE`` or ``TYPE:key=value,...``, e.g. ``ivf:nlist=1024,nprobe=32``. Defaults:
nlist = 4*sqrt(N), clamped so each list has at least 39 training rows (FAISS's k-means minimum)
within a 512 MiB training sample; nprobe = max(8, ceil(sqrt(nlist))); PQ m = the largest divisor
of dim that is at most dim/16, 8-bit codes, refine=10 (10 x k candidates re-ranked exactly from
the stored vectors); HNSW M=32, efConstruction=40, efSearch=64 (at least k). A store too small
to train the type asked for (ivf: 78 rows; ivfpq: 39 * 2**nbits rows, 9984 for 8 bits) is searched exactly
instead, and the manifest's index entry says so under ``fallback``.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from curator.config import SearchSpec, divisors
from curator.io.atomic import write_atomic
from curator.store.parts import sha256_file
from curator.store.scan import VectorSource, exact_top_k, scan

FAISS_CLASS = {"ivf": "IndexIVFFlat", "ivfpq": "IndexIVFPQ", "hnsw": "IndexHNSWFlat"}
MIN_PER_CENTROID = 39  # FAISS's k-means warns with fewer training points per centroid
TRAIN_BYTES = 512 << 20  # float32 training sample budget
BUILD_CHUNK_BYTES = 64 << 20  # float32 rows added to an index at a time
ADD_TABLE_BYTES = 32 << 20  # PQ distance tables of one add_with_ids call
SHARD_BYTES = 16 << 20  # float32 rows per shard of an out-of-core IVF build
SAMPLE_SEED = 0


def default_m(d: int) -> int:
    """PQ sub-quantizers: the largest divisor of d that is at most d/16 (16-dim sub-vectors)."""
    return max(m for m in divisors(d) if m <= max(1, d // 16))


def _flat_entry(spec: SearchSpec, n: int, d: int) -> dict[str, Any]:
    return {
        "type": "flat",
        "requested": str(spec),
        "faiss": "faiss.knn inner product over the float16 parts",
        "params": {},
        "file": None,
        "ntotal": n,
        "bytes_per_example": 2 * d,
    }


def plan(spec: SearchSpec, n: int, d: int) -> dict[str, Any]:
    """The index to build for ``n`` rows of dim ``d``: resolved parameters, or a flat fallback."""
    if spec.type == "flat":
        return _flat_entry(spec, n, d)

    def fallback(why: str) -> dict[str, Any]:
        return {**_flat_entry(spec, n, d), "fallback": f"{why}: searched exactly (flat) instead"}

    if n == 0:
        return fallback("the store is empty")
    p = dict(spec.params)
    params: dict[str, int] = {}
    clamped: dict[str, dict[str, int]] = {}
    train_rows = 0
    if spec.type in ("ivf", "ivfpq"):
        budget = max(1, TRAIN_BYTES // (4 * d))
        want = p.get("nlist", max(1, round(4 * math.sqrt(n))))
        nlist = min(want, min(n, budget) // MIN_PER_CENTROID)
        if nlist < 2:
            return fallback(f"{spec.type} needs at least {2 * MIN_PER_CENTROID} rows to train 2 lists ({MIN_PER_CENTROID} rows per list); the store has {n}")
        if "nlist" in p and nlist < want:
            clamped["nlist"] = {"asked": want, "used": nlist}
        nprobe = p.get("nprobe", max(8, math.ceil(math.sqrt(nlist))))
        if "nprobe" in p and nprobe > nlist:
            clamped["nprobe"] = {"asked": nprobe, "used": nlist}
        params = {"nlist": nlist, "nprobe": min(nprobe, nlist)}
        centroids = nlist
        if spec.type == "ivfpq":
            nbits = p.get("nbits", 8)
            need = MIN_PER_CENTROID * 2**nbits
            if n < need:
                return fallback(f"ivfpq needs at least {need} rows to train {nbits}-bit PQ codebooks ({MIN_PER_CENTROID} rows per code; a smaller nbits needs fewer); the store has {n}")
            params.update(m=p.get("m", default_m(d)), nbits=nbits, refine=p.get("refine", 10))
            centroids = max(nlist, 2**nbits)
        train_rows = min(n, max(MIN_PER_CENTROID * centroids, min(64 * centroids, budget)))
    else:  # hnsw needs no training
        params = {"M": p.get("M", 32), "efConstruction": p.get("efConstruction", 40), "efSearch": p.get("efSearch", 64)}
    entry = {"type": spec.type, "requested": str(spec), "faiss": FAISS_CLASS[spec.type], "params": params, "ntotal": n, "train_rows": train_rows}
    if clamped:  # an explicit value the store cannot train (or nprobe > nlist): the most it can
        entry["clamped"] = clamped
    return entry


# ---------------------------------------------------------------------- building


def _new_index(entry: dict[str, Any], d: int) -> Any:
    import faiss

    p = entry["params"]
    key = {"ivf": f"IVF{p.get('nlist')},Flat", "ivfpq": f"IVF{p.get('nlist')},PQ{p.get('m')}x{p.get('nbits')}", "hnsw": f"HNSW{p.get('M')},Flat"}[entry["type"]]
    index = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    if entry["type"] == "hnsw":
        index.hnsw.efConstruction = p["efConstruction"]
    if entry["type"] == "ivfpq":
        index.do_polysemous_training = False  # the factory's default; unused here and slow to train
    return index


def write_index(index: Any, path: Path) -> tuple[int, str]:
    """Stream ``index`` to ``path`` atomically (temp file, fsync, rename); return its size and sha256."""
    import faiss

    h = hashlib.sha256()
    size = 0

    def writer(fh: Any) -> None:
        def put(b: bytes) -> None:
            nonlocal size
            fh.write(b)
            h.update(b)
            size += len(b)

        faiss.write_index(index, faiss.PyCallbackIOWriter(put))

    write_atomic(path, writer)
    return size, h.hexdigest()


def build(spec: SearchSpec, store: VectorSource, path: Path) -> dict[str, Any]:
    """Build the index ``spec`` asks for over ``store``'s rows, part by part, write it to ``path``; return its manifest entry.

    IVF types are built out of core (the FAISS on-disk recipe): the trained, empty index is copied
    once per chunk of rows, each copy gets its rows with ``add_with_ids`` (global row numbers) and
    is written to a shard file, and the shards' inverted lists are merged into one on-disk file
    (``index.<build>.ivfdata``, beside ``path``) that searches memory-map. Memory stays at the
    trained index plus one chunk, whatever the store's size. HNSW is built in memory.
    """
    entry = plan(spec, store.n_rows, store.dim)
    if entry["type"] == "flat":
        return entry
    start = time.perf_counter()
    index = _new_index(entry, store.dim)
    if entry["train_rows"]:
        rng = np.random.default_rng(SAMPLE_SEED)
        sample = store.read_rows(np.sort(rng.choice(store.n_rows, entry["train_rows"], replace=False)))
        index.train(sample)
        del sample
    entry["train_seconds"] = round(time.perf_counter() - start, 3)
    if entry["type"] in ("ivf", "ivfpq"):
        entry.update(_build_on_disk(index, store, path))
    else:
        for _, chunk in scan([store], [1.0], BUILD_CHUNK_BYTES):
            index.add(chunk.numpy())
    nbytes, sha = write_index(index, path)
    entry.update(file=path.name, bytes=nbytes, sha256=sha, bytes_per_example=round((nbytes + int(entry.get("ivfdata_bytes", 0))) / store.n_rows, 1), build_seconds=round(time.perf_counter() - start, 3))
    return entry


def _build_on_disk(index: Any, store: VectorSource, path: Path) -> dict[str, Any]:
    """Fill trained IVF ``index`` with on-disk inverted lists, shard by shard; the entry's ivfdata fields."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    ivfdata = path.parent / f"{path.stem}.{secrets.token_hex(6)}.ivfdata"  # a fresh name: no reader has it open
    with tempfile.TemporaryDirectory(prefix=".index-build.", dir=path.parent) as tmp:
        shards = []
        step = _rows_per_add(index)
        for lo, chunk in scan([store], [1.0], SHARD_BYTES):
            shard = faiss.clone_index(index)
            x = chunk.numpy()
            for a in range(0, len(x), step):
                shard.add_with_ids(x[a : a + step], np.arange(lo + a, lo + min(a + step, len(x)), dtype=np.int64))
            shards.append(str(Path(tmp) / f"shard-{len(shards):05d}.index"))
            faiss.write_index(shard, shards[-1])
            del shard
        with _quiet_stdout():  # OnDiskInvertedLists printf()s each file resize
            merge_ondisk(index, shards, str(ivfdata))
    return {"ivfdata": ivfdata.name, "ivfdata_bytes": ivfdata.stat().st_size, "ivfdata_sha256": sha256_file(ivfdata)}


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence C-level writes to stdout (file descriptor 1) for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _rows_per_add(index: Any) -> int:
    """Rows per ``add_with_ids`` call: PQ encoding holds a float table of m x 2**nbits per row
    (64 KiB a row at m=64, 8 bits), so a whole chunk at once would spike by a gigabyte."""
    import faiss

    pq = getattr(faiss.downcast_index(faiss.extract_index_ivf(index)), "pq", None)
    if pq is None:
        return 1 << 30
    return max(1, ADD_TABLE_BYTES // (4 * int(pq.M) * int(pq.ksub)))


def remove_stale_ivfdata(folder: Path, entry: dict[str, Any] | None) -> None:
    """Delete on-disk inverted lists no index entry names any more (after the manifest moved on)."""
    keep = (entry or {}).get("ivfdata")
    for f in folder.glob("*.ivfdata"):
        if f.name != keep:
            f.unlink(missing_ok=True)


# ---------------------------------------------------------------------- searching


class ExactSearcher:
    """Exact FAISS inner-product search over the stored vectors of one or more stores."""

    def __init__(self, stores: Sequence[VectorSource], scales: Sequence[float]) -> None:
        self.stores, self.scales = list(stores), list(scales)
        self.ntotal = stores[0].n_rows
        self.d = sum(s.dim for s in stores)
        self.type = "flat"

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_top_k(self.stores, self.scales, x, min(k, self.ntotal))


class ApproxSearcher:
    """A store's approximate FAISS index; IVF-PQ candidates are re-ranked exactly from the parts."""

    def __init__(self, store: VectorSource, index: Any, entry: dict[str, Any]) -> None:
        self.store, self.index, self.entry = store, index, entry
        self.ntotal, self.d, self.type = int(index.ntotal), int(index.d), entry["type"]

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        p = self.entry["params"]
        k = min(k, self.ntotal)
        q = np.ascontiguousarray(x, dtype=np.float32)
        if self.type == "hnsw":
            self.index.hnsw.efSearch = max(p["efSearch"], k)
        else:
            faiss.extract_index_ivf(self.index).nprobe = p["nprobe"]
        refine = p.get("refine", 1)
        dist, ids = self.index.search(q, min(self.ntotal, k * refine))
        if refine > 1:
            dist, ids = self._rerank(q, ids, k)
        return dist[:, :k], ids[:, :k]

    def _rerank(self, q: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidates from the stored vectors; the best k per query."""
        found = ids >= 0
        uniq = np.unique(ids[found])
        if not len(uniq):
            return np.full(ids.shape, -np.inf, dtype=np.float32), ids
        exact = q @ self.store.read_rows(uniq).T  # [n_queries, n_candidates]
        pos = np.searchsorted(uniq, np.where(found, ids, uniq[0]))
        scores = np.where(found, np.take_along_axis(exact, pos, axis=1), -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def is_current(entry: dict[str, Any], n_rows: int) -> bool:
    """True when a manifest's index entry names an approximate index file that covers all ``n_rows``."""
    return entry.get("type") in FAISS_CLASS and bool(entry.get("file")) and entry.get("ntotal") == n_rows


def open_index(store: VectorSource, path: Path, entry: dict[str, Any]) -> ApproxSearcher:
    """The approximate index at ``path`` (already checked against ``entry``), memory-mapped."""
    import faiss

    if entry.get("ivfdata"):
        # on-disk inverted lists, memory-mapped by FAISS itself, found beside the index file wherever
        # the store now lives (FAISS announces the new path on stdout; with IO_FLAG_MMAP it crashes)
        with _quiet_stdout():
            return ApproxSearcher(store, faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR), entry)
    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if entry["type"] == "hnsw" else faiss.IO_FLAG_MMAP  # faiss < 1.10 reads HNSW into memory
    return ApproxSearcher(store, faiss.read_index(str(path), flag), entry)
