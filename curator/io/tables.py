"""Read and write result tables as Parquet, CSV or JSONL, chosen by the file suffix; writes are atomic."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from curator.io.atomic import write_bytes_atomic
from curator.errors import InputError

TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")


def check_table_path(path: str | Path) -> Path:
    """Refuse an output path whose suffix is not a supported table format."""
    p = Path(path)
    if p.suffix.lower() not in TABLE_SUFFIXES:
        raise InputError(f"{p}: unsupported output type {p.suffix!r}: use .parquet, .csv or .jsonl")
    return p


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` atomically in the format its suffix names (.parquet, .csv, .jsonl); returns the path."""
    p = check_table_path(path)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        data = buf.getvalue()
    elif suffix == ".csv":
        data = df.to_csv(index=False).encode("utf-8")
    else:
        data = df.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")
    write_bytes_atomic(p, data)
    return p


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by ``write_table``; returns a pandas DataFrame."""
    p = check_table_path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file: check the path")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(p)
        if suffix == ".csv":
            return pd.read_csv(p)
        return pd.read_json(p, lines=True)
    except Exception as exc:
        raise InputError(f"{p}: cannot read the table ({type(exc).__name__}: {exc}): pass a file written by curator") from None
