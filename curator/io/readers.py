"""Data files read as rows: JSONL, JSON, CSV, Parquet, or a directory saved by ``datasets``.

Every reader yields plain dict rows with their location ('line N' or 'row N'), and every
problem (encoding, malformed JSON or CSV, an unreadable file) is one line naming the file, the
line or row, and the fix. What a row must hold is checked by curator.io.data.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from curator.errors import InputError

_JSON_FIX = "write one JSON object per line"


def short_repr(value: Any, limit: int = 60) -> str:
    """A short one-line repr of a value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception from a library as one short line (its messages may span lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode(path: Path, data: bytes, csv_lines: bool = False) -> str:
    """The file's text, without a leading BOM; bad bytes are named by line (counted as the CSV reader counts, with ``csv_lines``)."""
    data = data[3:] if data.startswith(codecs.BOM_UTF8) else data  # not "utf-8-sig": its error offsets skip the BOM
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if csv_lines:  # \r alone also ends a line there
            line = len(io.StringIO(data[: exc.start].decode("utf-8", "ignore") + ".", newline="").readlines())
        else:
            line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path}: line {line}: not valid UTF-8 (byte {data[exc.start]:#04x}): re-save the file as UTF-8") from None


def _loads(text: str) -> Any:
    """``json.loads`` whose every failure is a ValueError (deep nesting too)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _json_problem(exc: ValueError) -> tuple[str, str]:
    """What is wrong with a JSON text, and the fix."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}", "fix the syntax"
    if "integer string conversion" in str(exc):
        return "an integer with more than 4300 digits", "quote long numbers as strings"
    return one_line(exc), "flatten the data"  # nested too deeply


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[3:]  # written by some editors; JSON itself has no BOM
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}: line {lineno}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1}): re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield lineno, _loads(line)
            except ValueError as exc:
                problem, fix = _json_problem(exc)
                raise InputError(f"{path}: line {lineno}: invalid JSON ({problem}): {fix}; {_JSON_FIX}") from None


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    text = _decode(path, path.read_bytes())
    try:
        payload = _loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}): fix the syntax; the file must hold a list of row objects") from None
    except ValueError as exc:
        problem, fix = _json_problem(exc)
        raise InputError(f"{path}: invalid JSON ({problem}): {fix}; the file must hold a list of row objects") from None
    if isinstance(payload, dict):
        for key in ("data", "rows", "records"):
            if isinstance(payload.get(key), list):
                payload = payload[key]
                break
    if not isinstance(payload, list):
        raise InputError(f"{path}: expected a JSON list of row objects (or {{\"data\": [...]}}), got {type(payload).__name__}: put the rows in a top-level list")
    yield from enumerate(payload, start=1)


def _csv_prompt(prompt: Any) -> Any:
    """A CSV prompt cell holding a JSON list of chat messages, parsed; anything else unchanged."""
    if isinstance(prompt, str) and prompt.lstrip().startswith("["):
        try:
            parsed = _loads(prompt)
        except ValueError:
            return prompt
        if isinstance(parsed, list) and parsed and all(isinstance(m, dict) for m in parsed):
            return parsed
    return prompt


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    text = _decode(path, path.read_bytes(), csv_lines=True)
    # newline="": only \n, \r and \r\n end a record (str.splitlines would also split on \u2028 etc.)
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, 2**31 - 1))  # long prompts are fine; the default 128 KiB is not a data limit
    try:
        try:
            header = reader.fieldnames
        except csv.Error as exc:
            raise InputError(f"{path}: line 1: malformed CSV header ({one_line(exc)}): check the quotes on line 1") from None
        if not header:
            raise InputError(f"{path}: the CSV has no header row: put the column names (prompt,response,...) on line 1")
        seen: set[str] = set()
        for name in header:
            if name in seen and name:
                raise InputError(f"{path}: line 1: column {short_repr(name)} appears twice in the header: rename or remove one of them")
            seen.add(name)
        if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
            raise InputError(f"{path}: line 1: the header is one column {short_repr(header[0])}: separate the columns with commas")
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                lines = io.StringIO(text, newline="").readlines()
                while start <= len(lines) and lines[start - 1] in ("\n", "\r\n", "\r"):
                    start += 1  # the reader skips empty lines before a record
                raise InputError(f"{path}: line {start}: malformed CSV ({one_line(exc)}): close every quoted field with a \" and double any \" inside it") from None
            if None in row:
                raise InputError(f"{path}: line {reader.line_num}: more values than header columns: quote fields that contain commas")
            # line_num is the physical line of the row's end; header is line 1.
            clean = {k: (None if v == "" else v) for k, v in row.items()}
            if "prompt" in clean:
                clean["prompt"] = _csv_prompt(clean["prompt"])
            yield reader.line_num, clean
    finally:
        csv.field_size_limit(old_limit)


def _arrow_rows(path: Path, table: Any, fix: str) -> list[dict[str, Any]]:
    """A pyarrow table as Python rows; a value that has no Python form is named by row and column."""
    names = list(table.column_names)
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InputError(f"{path}: column {short_repr(dup)} appears twice: {fix}")
    try:
        return table.to_pylist()
    except Exception as exc:  # pyarrow raises several types (e.g. a timestamp out of Python's range)
        first = exc
    for name in names:
        column = table.column(name)
        for i in range(len(column)):
            try:
                column[i].as_py()
            except Exception as exc:
                raise InputError(f"{path}: row {i + 1}: field {short_repr(name)} has no Python value ({one_line(exc)}): {fix}") from None
    raise InputError(f"{path}: cannot convert the rows ({one_line(first)}): {fix}")


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path).read()  # unlike read_table, keeps duplicate column names for a clear error
    except Exception as exc:  # pyarrow raises several types for bad files
        raise InputError(f"{path}: cannot read as Parquet ({type(exc).__name__}: {one_line(exc)}): check the file is a valid Parquet file") from None
    yield from enumerate(_arrow_rows(path, table, "re-save the file with string columns prompt, response, ..."), start=1)


def _read_hf_dir(path: Path) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a directory saved by datasets.save_to_disk ({one_line(exc)}): point at a data file or a saved dataset") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        if len(splits) != 1:
            raise InputError(f"{path}: a DatasetDict with splits {splits}: point at one split's folder, e.g. {path / splits[0]}")
        ds = ds[splits[0]]
    fix = "re-save the dataset with save_to_disk and string columns prompt, response, ..."
    try:
        table = ds.with_format("arrow")[:]
    except Exception as exc:  # a damaged .arrow file is only read here
        raise InputError(f"{path}: cannot read the saved rows ({type(exc).__name__}: {one_line(exc)}): {fix}") from None
    yield from enumerate(_arrow_rows(path, table, fix), start=1)


def read_rows(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a data file as (location, row) pairs; location is 'line N' or 'row N'."""
    p = Path(path)
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except (OSError, ValueError) as exc:  # e.g. a name too long for the file system, or a NUL byte
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
        raise InputError(f"{p}: not a usable path ({why}): check the path") from None
    if not exists:
        raise InputError(f"{p}: no such file or directory: check the path")
    if is_dir:
        reader, unit = _read_hf_dir, "row"
    elif p.suffix.lower() in (".jsonl", ".ndjson"):
        reader, unit = _read_jsonl, "line"
    elif p.suffix.lower() == ".json":
        reader, unit = _read_json, "row"
    elif p.suffix.lower() == ".csv":
        reader, unit = _read_csv, "line"
    elif p.suffix.lower() == ".parquet":
        reader, unit = _read_parquet, "row"
    else:
        raise InputError(f"{p}: unsupported file type {p.suffix!r}: use .jsonl, .json, .csv, .parquet or a datasets directory")
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        for n, row in reader(p):
            where = f"{p}: {unit} {n}"
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected an object with fields prompt/response/..., got {type(row).__name__}: write each row as an object like {{\"prompt\": ..., \"response\": ...}}")
            out.append((where, row))
    except OSError as exc:
        raise InputError(f"{p}: cannot read the file ({exc.strerror or one_line(exc)}): check that it exists and is readable") from None
    if not out:
        raise InputError(f"{p}: the file has no rows: add at least one row")
    return out
