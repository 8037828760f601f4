"""A gradient store's part files: naming, rolling small parts up, and finding rows after a roll-up.

``curator index`` commits one part (a float16 ``.npy`` and a ``.parquet`` row table) per batch of
``--batch-size`` rows, so that a killed run resumes after its last batch. Left like that, a
million rows at the default 32 per batch would be 31,250 parts: every scan would open, checksum
and map each one (at 100,000 rows in 32-row parts, centroid ranking took 0.76 s instead of
0.04 s), and the manifest rewritten at every commit would grow with them. So the trailing run of
small parts is merged into one part as soon as it holds ``ROLLUP_BYTES`` of vectors, and once more
at finalize. Parts then hold about 64 MiB each: 4,096 rows at d = 8192, 32,768 at d = 1024.

Crash safety: the merged part is written (atomically) under a fresh name, then the manifest that
lists it instead of the parts it replaces, and only then are those deleted. A kill leaves either
the old manifest or the new one, and maybe files no manifest lists, which the next writer removes
(``sweep_unlisted``, under the writer lock). Rows never move or change in a roll-up, so a reader
that read the old manifest and finds a part's file gone looks the same rows up in the merged
part (``relocate``).

This module knows part files, their checksums and a manifest's ``parts`` list, all as plain
values; the store (curator.store.store) owns the manifest and decides when to commit it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import numpy as np
from numpy.lib import format as npy_format

from curator.errors import StoreError
from curator.io.atomic import write_atomic, write_bytes_atomic

PART_NAME = re.compile(r"part-\d{5,}(?:-r\d{4,}-\d{5,})?")  # part-NNNNN, or a rank's part-JJJJJ-rRRRR-NNNNN
ROLLUP_BYTES = 64 * 2**20
SUFFIX = {"vectors": ".npy", "rows": ".parquet"}


class MissingFileError(StoreError):
    """A file the manifest lists is not there."""


def missing_file(f: Path) -> MissingFileError:
    return MissingFileError(f"{f}: missing store file: the store is damaged; rerun `curator index` into a new --out directory")


def corrupt_file(f: Path) -> StoreError:
    return StoreError(f"{f}: checksum does not match the manifest (corrupt or truncated file): rebuild the store with `curator index`")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 of a file, streamed in 8 MiB blocks (hashlib releases the GIL, so files hash in parallel)."""
    h = hashlib.sha256()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class PartFiles:
    """A store's ``parts/`` folder: each file is checked against its manifest sha256 before use.

    A vector file is stream-hashed once per ``PartFiles`` (one per opened store); row tables are
    small and are hashed at every read.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.verified: set[str] = set()

    def file(self, part: dict[str, Any], kind: str) -> Path:
        return self.folder / f"{part['name']}{SUFFIX[kind]}"

    def read_checked(self, part: dict[str, Any], kind: str) -> bytes:
        """A part file's bytes (``kind`` is vectors or rows), checked against its sha256."""
        f = self.file(part, kind)
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            raise missing_file(f) from None
        if sha256(data) != part[f"{kind}_sha256"]:
            raise corrupt_file(f)
        return data

    def check(self, f: Path, sha: str) -> None:
        """Stream-hash ``f`` (a part or the index file) against the manifest, once."""
        if str(f) in self.verified:
            return
        try:
            digest = sha256_file(f)
        except FileNotFoundError:
            raise missing_file(f) from None
        if digest != sha:
            raise corrupt_file(f)
        self.verified.add(str(f))

    def map(self, part: dict[str, Any], dim: int) -> np.ndarray:
        """The part's float16 vectors [rows, dim], checked, then memory-mapped copy-on-write.

        MissingFileError (or FileNotFoundError from the map) when the file is gone.
        """
        f = self.file(part, "vectors")
        self.check(f, part["vectors_sha256"])
        arr = np.load(f, mmap_mode="c")
        if arr.dtype != np.float16 or arr.shape != (part["rows"], dim):
            raise StoreError(f"{f}: holds {arr.dtype} {arr.shape}, the manifest says float16 ({part['rows']}, {dim}): rebuild the store with `curator index`")
        return arr

    def write(self, name: str, vectors: np.ndarray, row_bytes: bytes) -> dict[str, Any]:
        """Write a part's two files under ``name``; returns its manifest entry (not yet committed)."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(vectors, dtype=np.float16))
        vec_bytes = buf.getvalue()
        write_bytes_atomic(self.folder / f"{name}.npy", vec_bytes)
        return {"name": name, "rows": int(vectors.shape[0]), "vectors_sha256": sha256(vec_bytes), "rows_sha256": self._write_rows(name, row_bytes)}

    def _write_rows(self, name: str, row_bytes: bytes) -> str:
        write_bytes_atomic(self.folder / f"{name}.parquet", row_bytes)
        return sha256(row_bytes)

    def merge(self, name: str, run: Sequence[dict[str, Any]], dim: int, vectors_of: Callable[[dict[str, Any]], np.ndarray]) -> dict[str, Any]:
        """Write the parts of ``run`` as one part ``name``, streamed one small part at a time.

        ``vectors_of(part)`` gives a part's checked vectors; the rows and float16 values keep their
        order. Returns the merged part's manifest entry (not yet committed).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = sum(int(p["rows"]) for p in run)
        header = io.BytesIO()
        npy_format.write_array_header_1_0(header, {"descr": npy_format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False, "shape": (n, dim)})
        digest = hashlib.sha256()

        def write(fh: IO[bytes]) -> None:
            fh.write(header.getvalue())
            digest.update(header.getvalue())
            for p in run:
                data = np.ascontiguousarray(vectors_of(p)).tobytes()
                fh.write(data)
                digest.update(data)

        write_atomic(self.folder / f"{name}.npy", write)
        table = pa.concat_tables([pq.read_table(io.BytesIO(self.read_checked(p, "rows"))) for p in run], promote_options="default")
        rbuf = io.BytesIO()
        pq.write_table(table, rbuf)
        return {"name": name, "rows": table.num_rows, "vectors_sha256": digest.hexdigest(), "rows_sha256": self._write_rows(name, rbuf.getvalue())}

    def remove(self, run: Sequence[dict[str, Any]]) -> None:
        """Delete the files of parts no manifest lists any more."""
        for p in run:
            for suffix in SUFFIX.values():
                (self.folder / f"{p['name']}{suffix}").unlink(missing_ok=True)

    def sweep_unlisted(self, listed: set[str]) -> None:
        """Remove part files whose name is not in ``listed`` (left by a kill during a roll-up). Writers only."""
        for f in self.folder.glob("part-*"):
            if f.suffix in SUFFIX.values() and PART_NAME.fullmatch(f.stem) and f.stem not in listed:
                f.unlink(missing_ok=True)


def new_name(manifest: dict[str, Any], prefix: str = "part-") -> str:
    """A part name never used in this store (stores written before roll-ups named parts by position).

    A rank of a torchrun job names its parts with its own prefix (``part-JJJJJ-rRRRR-``: the job
    and the rank), so ranks writing into one store never pick the same name.
    """
    n = int(manifest.get("next_part", len(manifest["parts"])))
    manifest["next_part"] = n + 1
    return f"{prefix}{n:05d}"


def rollup_start(parts: Sequence[dict[str, Any]], dim: int, final: bool) -> int | None:
    """Where the trailing run of small parts to merge begins, or None when it is not time yet.

    A part is small when it holds fewer rows than ROLLUP_BYTES of vectors. The run is merged once
    it holds ROLLUP_BYTES (with ``final``, whatever it holds), and only when it has two parts or more.
    """
    target = max(1, ROLLUP_BYTES // (2 * dim))
    lo = len(parts)
    while lo > 0 and int(parts[lo - 1]["rows"]) < target:
        lo -= 1
    run = parts[lo:]
    if len(run) < 2 or (not final and sum(int(p["rows"]) for p in run) < target):
        return None
    return lo


def relocate(manifest_file: Path, parts: Sequence[dict[str, Any]], part: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
    """The part of the manifest now on disk that holds ``part``'s rows, and their offset in it.

    ``parts`` is the manifest this reader holds; None when no other part holds the rows: the
    file is really gone.
    """
    lo = 0
    for p in parts:
        if p["name"] == part["name"]:
            break
        lo += int(p["rows"])
    n = int(part["rows"])
    try:
        fresh = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        fresh = {}
    start = 0
    for q in fresh.get("parts") or []:
        if not isinstance(q, dict) or not PART_NAME.fullmatch(str(q.get("name"))):
            break
        r = int(q["rows"])
        if start <= lo and lo + n <= start + r and q["name"] != part["name"]:
            return q, lo - start
        start += r
    return None
