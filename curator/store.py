"""The on-disk gradient store: a directory that holds projected, normalised gradient vectors.

Layout::

    STORE/manifest.json          format version, curator version, model fingerprint, LoRA,
                                 projection and gradient config, row count, parts + checksums
    STORE/parts/part-00000.npy   float16 vectors of one appended batch, [n, dim]
    STORE/parts/part-00000.parquet  its rows: id, strategy, task, group, token counts
    STORE/index.faiss            FAISS inner-product index with ids (row numbers), written
                                 when the run completes

Every file is written atomically, and a batch counts only once the manifest lists it, so an
interrupted ``curator index`` resumes after the last committed batch. Files are checked against
the manifest's sha256 when read.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from curator import __version__
from curator.atomic import write_bytes_atomic, write_json_atomic
from curator.errors import MismatchError, StoreError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ROW_COLUMNS = ["id", "strategy", "task", "group", "n_prompt_tokens", "n_response_tokens", "truncated"]
# The settings that define a store's vectors: two stores (or a resumed run) must agree on them.
IDENTITY_FIELDS = ("role", "model.fingerprint", "lora", "projection", "gradient.kind", "gradient.checkpoint", "gradient.max_length", "gradient.dtype")
# The settings a train store and an eval store must share to be compared.
COMPARABLE_FIELDS = ("model.fingerprint", "lora", "projection", "gradient.checkpoint")


def _get(d: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        d = d.get(key) if isinstance(d, dict) else None  # type: ignore[assignment]
    return d


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:117] + "..."


def compare_manifests(a: dict[str, Any], b: dict[str, Any], fields: Iterable[str], a_name: str, b_name: str) -> None:
    """Raise MismatchError naming the first field where ``a`` and ``b`` differ, with both values."""
    for f in fields:
        va, vb = _get(a, f), _get(b, f)
        if va != vb:
            raise MismatchError(f"{a_name} and {b_name} differ in {f}: {_short(va)} vs {_short(vb)}: rebuild one of them with the same settings")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class GradientStore:
    """A gradient store directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

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
        return cls(p, manifest)

    @classmethod
    def create_or_resume(cls, path: str | Path, identity: dict[str, Any]) -> "GradientStore":
        """Open ``path`` to append, checking it was made with the same settings, or create it."""
        p = Path(path)
        if (p / MANIFEST).exists():
            store = cls.open(p)
            compare_manifests(store.manifest, identity, IDENTITY_FIELDS, f"existing store {p}", "this run")
            return store
        if p.exists() and any(p.iterdir()):
            raise StoreError(f"{p}: exists and is not a gradient store: choose an empty or new --out directory")
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

    def _write_manifest(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest)

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

    # ------------------------------------------------------------------ writing

    def append(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
        """Commit one batch: its vectors and rows, then the manifest that lists them."""
        if len(rows) != vectors.shape[0] or vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"batch of {len(rows)} rows with vectors {vectors.shape}, store dim {self.dim}")
        name = f"part-{len(self.manifest['parts']):05d}"
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(vectors, dtype=np.float16))
        vec_bytes = buf.getvalue()
        table = pd.DataFrame([{c: r.get(c) for c in ROW_COLUMNS} for r in rows], columns=ROW_COLUMNS)
        for col in ("id", "strategy", "task", "group"):
            table[col] = table[col].astype("string")
        rbuf = io.BytesIO()
        table.to_parquet(rbuf, index=False)
        row_bytes = rbuf.getvalue()
        write_bytes_atomic(self.path / "parts" / f"{name}.npy", vec_bytes)
        write_bytes_atomic(self.path / "parts" / f"{name}.parquet", row_bytes)
        self.manifest["parts"].append({"name": name, "rows": len(rows), "vectors_sha256": _sha256(vec_bytes), "rows_sha256": _sha256(row_bytes)})
        self.manifest["rows"] += len(rows)
        self.manifest["truncated"] += sum(1 for r in rows if r.get("truncated"))
        self.manifest["complete"] = False
        self._write_manifest()

    def finalize(self) -> None:
        """Write the FAISS index over all rows and mark the store complete."""
        import faiss

        index = self._build_index()
        write_bytes_atomic(self.path / INDEX_FILE, faiss.serialize_index(index).tobytes())
        self.manifest["index"] = {"file": INDEX_FILE, "type": "IndexIDMap2(IndexFlatIP)", "ntotal": int(index.ntotal)}
        self.manifest["complete"] = True
        self._write_manifest()

    # ------------------------------------------------------------------ reading

    def _read_checked(self, part: dict[str, Any], kind: str) -> bytes:
        suffix = ".npy" if kind == "vectors" else ".parquet"
        f = self.path / "parts" / f"{part['name']}{suffix}"
        if not f.exists():
            raise StoreError(f"{f}: missing store file: the store is damaged; rerun `curator index` into a new --out directory")
        data = f.read_bytes()
        if _sha256(data) != part[f"{kind}_sha256"]:
            raise StoreError(f"{f}: checksum does not match the manifest (corrupt or truncated file): rebuild the store with `curator index`")
        return data

    def rows(self) -> pd.DataFrame:
        """The row table, in store order (row number = FAISS id)."""
        frames = [pd.read_parquet(io.BytesIO(self._read_checked(p, "rows"))) for p in self.manifest["parts"]]
        if not frames:
            return pd.DataFrame(columns=ROW_COLUMNS)
        return pd.concat(frames, ignore_index=True)

    def ids(self) -> list[str]:
        return [str(i) for i in self.rows()["id"]]

    def vectors(self) -> np.ndarray:
        """All vectors as float32 [n_rows, dim]."""
        parts = [np.load(io.BytesIO(self._read_checked(p, "vectors"))) for p in self.manifest["parts"]]
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32)

    def _build_index(self) -> Any:
        import faiss

        vecs = self.vectors()
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if len(vecs):
            index.add_with_ids(vecs, np.arange(len(vecs), dtype=np.int64))
        return index

    def index(self) -> Any:
        """The FAISS inner-product index (row number ids); rebuilt from vectors if stale."""
        import faiss

        info = self.manifest.get("index")
        f = self.path / INDEX_FILE
        if info and info.get("ntotal") == self.n_rows and f.exists():
            index = faiss.deserialize_index(np.frombuffer(f.read_bytes(), dtype=np.uint8))
            if index.ntotal == self.n_rows and index.d == self.dim:
                return index
        return self._build_index()
