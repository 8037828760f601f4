"""The on-disk gradient store: a directory that holds projected, normalised gradient vectors.

Layout::

    STORE/manifest.json          format version, curator version, model fingerprint, LoRA,
                                 projection and gradient config, row count, parts + checksums
    STORE/parts/part-00000.npy   float16 vectors of one committed batch, [n, dim]; runs of
                                 small parts are merged into parts of about 64 MiB
                                 (curator.store.parts: roll-ups)
    STORE/parts/part-00000.parquet  its rows: id, strategy, task, group, token counts
    STORE/ranks/job-J-rank-R.json  only while a torchrun job runs (or after one was killed): each
                                 rank's own commits, folded into the manifest by rank 0
                                 (curator.store.ranks); its parts are named part-JJJJJ-rRRRR-NNNNN
    STORE/index.faiss            only for an approximate search type (ivf, ivfpq, hnsw): the
                                 FAISS inner-product index, ids = row numbers, built part by part
                                 when the run completes (curator.store.search)
    STORE/index.B.ivfdata        the IVF types' inverted lists, on disk and memory-mapped

The vector parts are the exact ("flat") search data themselves: exact search and centroid
scoring read them chunk by chunk, memory-mapped, and no float32 copy of the whole store is
ever made. Every file is written atomically, and a batch counts only once the manifest lists it,
so an interrupted ``curator index`` resumes after the last committed batch. Files are checked
against the manifest's sha256 when first read (streamed, never loaded whole to hash).
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from curator import __version__
from curator.config import SearchSpec, parse_search
from curator.errors import StoreError
from curator.io.atomic import write_json_atomic
from curator.store import search
from curator.store.lock import LOCK_FILE, StoreLock
from curator.store.parts import PART_NAME, MissingFileError, PartFiles, missing_file, new_name, relocate, rollup_start
from curator.store.identity import IDENTITY_FIELDS, compare_manifests, get as _get
from curator.store.ranks import journal_name, journals, part_prefix, read_journal

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ROW_COLUMNS = ["id", "strategy", "task", "group", "n_prompt_tokens", "n_response_tokens", "truncated"]
def _to_float32(a: np.ndarray) -> np.ndarray:
    """float16 -> float32 through torch: exact, and far faster than numpy's float16 cast."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).float().numpy()


@dataclass
class GradientStore:
    """A gradient store directory and its manifest."""

    path: Path
    manifest: dict[str, Any]
    _lock: StoreLock | None = field(default=None, repr=False, compare=False)
    manifest_name: str = MANIFEST  # a rank of a torchrun job commits to its journal instead (curator.store.ranks)
    prefix: str = "part-"

    def __post_init__(self) -> None:
        self.files = PartFiles(self.path / "parts")

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | Path) -> "GradientStore":
        """Open an existing store, refusing unknown formats."""
        p = Path(path)
        mf = p / MANIFEST
        if not mf.exists():
            raise StoreError(f"{p}: not a gradient store (no {MANIFEST}): build one with `curator index`")
        try:
            manifest = json.loads(mf.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{mf}: corrupt manifest ({exc}): rebuild the store with `curator index`") from None
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            fix = "upgrade curator" if newer else "rebuild the store with this curator's `curator index`"
            raise StoreError(f"{mf}: store format version {version} is not supported (this curator reads {FORMAT_VERSION}): {fix}")
        parts = manifest.get("parts")
        if not isinstance(parts, list) or not all(isinstance(q, dict) and isinstance(q.get("name"), str) and PART_NAME.fullmatch(q["name"]) for q in parts):
            raise StoreError(f"{mf}: the manifest's parts list is damaged (a part not named part-NNNNN): rebuild the store with `curator index`")
        return cls(p, manifest)

    @classmethod
    def create_or_resume(cls, path: str | Path, identity: dict[str, Any]) -> "GradientStore":
        """Open ``path`` to append, checking it was made with the same settings, or create it.

        The store's writer lock is taken first (see curator.store.lock) and held until ``close()``:
        a second writer is refused, naming the one that holds it.
        """
        p = Path(path)
        if not (p / MANIFEST).exists() and p.exists() and any(x.name != LOCK_FILE for x in p.iterdir()):
            raise StoreError(f"{p}: exists and is not a gradient store: choose an empty or new --out directory")
        lock = StoreLock(p).acquire()
        try:
            store = cls._create_or_resume_locked(p, identity)
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        return store

    def close(self) -> None:
        """Release the writer lock, if this process holds it."""
        if self._lock is not None:
            self._lock, lock = None, self._lock
            lock.release()

    @classmethod
    def _create_or_resume_locked(cls, p: Path, identity: dict[str, Any]) -> "GradientStore":
        if (p / MANIFEST).exists():  # checked again under the lock: another writer may have just made it
            store = cls.open(p)
            compare_manifests(store.manifest, identity, IDENTITY_FIELDS, f"existing store {p}", "this run")
            store.fold_journals()  # what the ranks of a killed torchrun job committed
            store.files.sweep_unlisted({q["name"] for q in store.manifest["parts"]})
            store._record_device(_get(identity, "gradient.device"))
            return store
        manifest = {
            "format_version": FORMAT_VERSION,
            "curator_version": __version__,
            **identity,
            "rows": 0,
            "truncated": 0,
            "parts": [],
            "index": None,
            "complete": False,
        }
        store = cls(p, manifest)
        (p / "parts").mkdir(parents=True, exist_ok=True)
        store._write_manifest()
        return store

    def _record_device(self, device: str | None) -> None:
        """Add a resuming run's device type to ``gradient.device`` (e.g. ``cpu+cuda``): recorded, never compared."""
        g = self.manifest.get("gradient")
        if not device or not isinstance(g, dict):
            return
        seen = [d for d in str(g.get("device") or "").split("+") if d]
        if device not in seen:
            g["device"] = "+".join(sorted([*seen, device]))
            self._write_manifest()

    def _write_manifest(self) -> None:
        write_json_atomic(self.manifest_file, self.manifest)

    @property
    def manifest_file(self) -> Path:
        return self.path / self.manifest_name

    # ------------------------------------------------------------------ ranks of a torchrun job

    def new_job(self) -> int:
        """Number a torchrun job writing into this store (its ranks' part names carry it). Writer only."""
        job = int(self.manifest.get("next_job", 0))
        self.manifest["next_job"] = job + 1
        self._write_manifest()
        return job

    def rank_writer(self, job: int, rank: int, held: dict[str, Any]) -> "GradientStore":
        """A writer for one rank: ``append`` commits to the rank's journal, never to the manifest.

        ``held`` describes the rows the rank was given (first, last, rows, source), for the line
        that names them if the rank dies. Takes no lock: the job's one lock is rank 0's.
        """
        skip = ("parts", "rows", "truncated", "index", "complete", "next_part", "next_job", "folded")
        journal = {**json.loads(json.dumps({k: v for k, v in self.manifest.items() if k not in skip})), "job": job, "rank": rank, "held": held, "rows": 0, "truncated": 0, "parts": []}
        writer = GradientStore(self.path, journal, manifest_name=journal_name(job, rank), prefix=part_prefix(job, rank))
        writer.manifest_file.parent.mkdir(parents=True, exist_ok=True)
        writer._write_manifest()
        return writer

    def fold_journals(self) -> int:
        """Append every rank journal's committed parts to the manifest, in (job, rank) order; rows added.

        Writer only (rank 0, holding the lock, once no rank writes). Each journal is deleted once the
        manifest that lists its parts is written; ``folded`` keeps its name so a repeat adds nothing.
        """
        added = 0
        folded = self.manifest.setdefault("folded", [])
        for job, rank, f in journals(self.path):
            name = f.name.removesuffix(".json")
            j = read_journal(f)
            if j is not None and name not in folded:
                compare_manifests(j, self.manifest, IDENTITY_FIELDS, f"rank {rank}'s journal {f}", f"store {self.path}")
                if not all(isinstance(q, dict) and PART_NAME.fullmatch(str(q.get("name"))) for q in j["parts"]):
                    raise StoreError(f"{f}: the journal's parts list is damaged: delete it and rerun `curator index` (its rows are indexed again)")
                self.manifest["parts"].extend(j["parts"])
                self.manifest.update(rows=self.manifest["rows"] + int(j.get("rows", 0)), truncated=self.manifest["truncated"] + int(j.get("truncated", 0)), complete=False)
                folded.append(name)
                added += int(j.get("rows", 0))
                self._write_manifest()
            f.unlink(missing_ok=True)
        return added

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return int(self.manifest["projection"]["dim"])

    @property
    def n_rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def lr_weight(self) -> float:
        return float(self.manifest["gradient"].get("lr_weight", 1.0))

    @property
    def search_spec(self) -> SearchSpec:
        """The search type asked for (``curator index --search``); flat when never asked."""
        return SearchSpec.from_dict(self.manifest.get("search"))

    # ------------------------------------------------------------------ writing

    def append(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
        """Commit one batch: its vectors and rows, then the manifest that lists them."""
        if len(rows) != vectors.shape[0] or vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"batch of {len(rows)} rows with vectors {vectors.shape}, store dim {self.dim}")
        table = pd.DataFrame([{c: r.get(c) for c in ROW_COLUMNS} for r in rows], columns=ROW_COLUMNS)
        for col in ("id", "strategy", "task", "group"):
            table[col] = table[col].astype("string")
        rbuf = io.BytesIO()
        table.to_parquet(rbuf, index=False)
        self.manifest["parts"].append(self.files.write(new_name(self.manifest, self.prefix), vectors, rbuf.getvalue()))
        self.manifest["rows"] += len(rows)
        self.manifest["truncated"] += sum(1 for r in rows if r.get("truncated"))
        self.manifest["complete"] = False
        self._write_manifest()
        self._rollup(final=False)

    def _rollup(self, final: bool) -> None:
        """Merge the trailing run of small parts when it is time (see curator.store.parts), then commit.

        The merged part is written first, then the manifest that lists it, and only then are the
        parts it replaces deleted: a kill leaves the old manifest or the new one.
        """
        parts = self.manifest["parts"]
        lo = rollup_start(parts, self.dim, final)
        if lo is None:
            return
        run = parts[lo:]
        parts[lo:] = [self.files.merge(new_name(self.manifest, self.prefix), run, self.dim, self.part_array)]
        self._write_manifest()
        self.files.remove(run)

    def request_search(self, text: str | None) -> bool:
        """Record the search type to build at finalize; True when it differs from the store's.

        ``None`` keeps the store's choice. The search type is not an identity field: changing it
        only marks the store incomplete, so the next finalize rebuilds the index.
        """
        if text is None:
            return False
        spec = parse_search(text, dim=self.dim)
        if spec == self.search_spec:
            return False
        self.manifest["search"] = spec.to_dict()
        self.manifest["complete"] = False
        self._write_manifest()
        return True

    def finalize(self) -> dict[str, Any]:
        """Build the search index the store asks for, part by part, and mark the store complete.

        Returns the manifest's ``index`` entry. The store is marked incomplete with no index
        while the new one is built, so an interrupted finalize is redone by the next run.
        """
        self.manifest["index"] = None
        self.manifest["complete"] = False
        self._write_manifest()
        self._rollup(final=True)
        entry = search.build(self.search_spec, self, self.path / INDEX_FILE)
        if entry.get("file") is None:
            (self.path / INDEX_FILE).unlink(missing_ok=True)  # flat: the parts are the index
        self.manifest["index"] = entry
        self.manifest["complete"] = True
        self._write_manifest()
        search.remove_stale_ivfdata(self.path, entry)
        return entry

    # ------------------------------------------------------------------ reading

    def read_checked(self, part: dict[str, Any], kind: str) -> bytes:
        """A part file's bytes (``kind`` is vectors or rows), checked against the manifest."""
        return self.files.read_checked(part, kind)

    def vector_file(self, part: dict[str, Any]) -> Path:
        return self.files.file(part, "vectors")

    def _relocated(self, part: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Where a part rolled up since this manifest was read now holds its rows."""
        found = relocate(self.manifest_file, self.manifest["parts"], part)
        if found is None:
            raise missing_file(self.vector_file(part))
        return found

    def part_array(self, part: dict[str, Any]) -> np.ndarray:
        """One part's float16 vectors [rows, dim], memory-mapped (copy-on-write, never written)."""
        try:
            return self.files.map(part, self.dim)
        except (FileNotFoundError, MissingFileError):
            merged, off = self._relocated(part)
            try:
                return self.files.map(merged, self.dim)[off : off + int(part["rows"])]
            except (FileNotFoundError, MissingFileError):  # merged again since: the store keeps changing under this reader
                raise missing_file(self.vector_file(part)) from None

    def _row_table(self, part: dict[str, Any], columns: list[str]) -> Any:
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(self.read_checked(part, "rows")), columns=columns)
        except MissingFileError:
            merged, off = self._relocated(part)
            return pq.read_table(io.BytesIO(self.read_checked(merged, "rows")), columns=columns).slice(off, int(part["rows"]))

    def verify(self) -> None:
        """Check every vector part against its manifest checksum (streamed, two files at a time)."""
        todo = [p for p in self.manifest["parts"] if str(self.vector_file(p)) not in self.files.verified]
        if len(todo) < 2:
            for p in todo:
                self.part_array(p)
            return
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(self.part_array, todo))

    def iter_parts(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row number, float16 memory map) of each part in row order, one open at a time."""
        lo = 0
        for p in self.manifest["parts"]:
            yield lo, self.part_array(p)
            lo += int(p["rows"])

    def read_rows(self, idx: np.ndarray) -> np.ndarray:
        """The vectors of the given row numbers as float32 [len(idx), dim], in the order given."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        if not len(idx):
            return out
        if idx.min() < 0 or idx.max() >= self.n_rows:
            raise IndexError(f"row numbers outside 0..{self.n_rows - 1}")
        starts = np.cumsum([0] + [int(p["rows"]) for p in self.manifest["parts"]])
        which = np.searchsorted(starts, idx, side="right") - 1
        for pi in np.unique(which):
            sel = np.nonzero(which == pi)[0]
            arr = self.part_array(self.manifest["parts"][pi])
            out[sel] = _to_float32(arr[idx[sel] - starts[pi]])
        return out

    def rows(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The row table (or some of its columns), in store order (row number = FAISS id)."""
        import pyarrow as pa

        cols = columns or ROW_COLUMNS
        tables = [self._row_table(p, cols) for p in self.manifest["parts"]]
        if not tables:
            return pd.DataFrame(columns=cols)
        df = pa.concat_tables(tables, promote_options="default").to_pandas()
        for col in ("id", "strategy", "task", "group"):
            if col in df:
                df[col] = df[col].astype("string")
        return df

    def ids(self) -> list[str]:
        return [str(i) for i in self.rows(["id"])["id"]]

    def vectors(self) -> np.ndarray:
        """All vectors as float32 [n_rows, dim]: for small stores and tests; scoring never calls it."""
        out = np.empty((self.n_rows, self.dim), dtype=np.float32)
        for lo, arr in self.iter_parts():
            out[lo : lo + len(arr)] = _to_float32(arr)
        return out

    def index(self) -> Any:
        """The store's searcher: ``.search(x, k) -> (scores, row numbers)``, ``.ntotal``, ``.d``.

        The approximate FAISS index when the store has a current one, else exact FAISS search
        over the stored vectors (see curator.store.search).
        """
        entry = self.manifest.get("index") or {}
        if search.is_current(entry, self.n_rows):
            f = self.path / entry["file"]
            self.files.check(f, entry["sha256"])
            if entry.get("ivfdata"):
                self.files.check(self.path / entry["ivfdata"], entry["ivfdata_sha256"])
            return search.open_index(self, f, entry)
        return search.ExactSearcher([self], [1.0])
