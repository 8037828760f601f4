"""Candidate and eval rows, their loaders, and validation.

A **candidate** is one response to a prompt, made by one generation strategy. Candidates for
the same prompt share a ``group``. An **eval item** is a prompt with a reference response and a
task. Rows come from JSONL, JSON, CSV, Parquet, or a directory saved by ``datasets``; every
validation error names the file, the row and the fix.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Union

from curator.errors import InputError

Message = dict[str, str]
Prompt = Union[str, list[Message]]
CHAT_ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Candidate:
    id: str
    prompt: Prompt
    response: str
    strategy: str
    task: str | None
    group: str


@dataclass(frozen=True)
class EvalItem:
    id: str
    prompt: Prompt
    response: str
    task: str


def content_hash(*parts: Any, length: int = 16) -> str:
    """A stable short hash of JSON-serialisable parts (used for ids and groups)."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def prompt_text(prompt: Prompt) -> str:
    """The prompt flattened to text (for display and hashing)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


# --------------------------------------------------------------------------- reading

_JSON_FIX = "write one JSON object per line"


def _show(value: Any, limit: int = 60) -> str:
    """A short one-line repr of a value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(exc: BaseException, limit: int = 200) -> str:
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
    return _one_line(exc), "flatten the data"  # nested too deeply


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
            raise InputError(f"{path}: line 1: malformed CSV header ({_one_line(exc)}): check the quotes on line 1") from None
        if not header:
            raise InputError(f"{path}: the CSV has no header row: put the column names (prompt,response,...) on line 1")
        seen: set[str] = set()
        for name in header:
            if name in seen and name:
                raise InputError(f"{path}: line 1: column {_show(name)} appears twice in the header: rename or remove one of them")
            seen.add(name)
        if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
            raise InputError(f"{path}: line 1: the header is one column {_show(header[0])}: separate the columns with commas")
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
                raise InputError(f"{path}: line {start}: malformed CSV ({_one_line(exc)}): close every quoted field with a \" and double any \" inside it") from None
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
        raise InputError(f"{path}: column {_show(dup)} appears twice: {fix}")
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
                raise InputError(f"{path}: row {i + 1}: field {_show(name)} has no Python value ({_one_line(exc)}): {fix}") from None
    raise InputError(f"{path}: cannot convert the rows ({_one_line(first)}): {fix}")


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path).read()  # unlike read_table, keeps duplicate column names for a clear error
    except Exception as exc:  # pyarrow raises several types for bad files
        raise InputError(f"{path}: cannot read as Parquet ({type(exc).__name__}: {_one_line(exc)}): check the file is a valid Parquet file") from None
    yield from enumerate(_arrow_rows(path, table, "re-save the file with string columns prompt, response, ..."), start=1)


def _read_hf_dir(path: Path) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a directory saved by datasets.save_to_disk ({_one_line(exc)}): point at a data file or a saved dataset") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        if len(splits) != 1:
            raise InputError(f"{path}: a DatasetDict with splits {splits}: point at one split's folder, e.g. {path / splits[0]}")
        ds = ds[splits[0]]
    fix = "re-save the dataset with save_to_disk and string columns prompt, response, ..."
    try:
        table = ds.with_format("arrow")[:]
    except Exception as exc:  # a damaged .arrow file is only read here
        raise InputError(f"{path}: cannot read the saved rows ({type(exc).__name__}: {_one_line(exc)}): {fix}") from None
    yield from enumerate(_arrow_rows(path, table, fix), start=1)


def read_rows(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a data file as (location, row) pairs; location is 'line N' or 'row N'."""
    p = Path(path)
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except (OSError, ValueError) as exc:  # e.g. a name too long for the file system, or a NUL byte
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
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
        raise InputError(f"{p}: cannot read the file ({exc.strerror or _one_line(exc)}): check that it exists and is readable") from None
    if not out:
        raise InputError(f"{p}: the file has no rows: add at least one row")
    return out


# --------------------------------------------------------------------------- validation


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _utf8(where: str, label: str, text: str) -> str:
    """``text`` unchanged, or an error when it cannot be written as UTF-8 (a lone surrogate from a \\ud800-style escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{where}: {label} holds an unpaired surrogate {text[exc.start]!r} at character {exc.start}: remove the broken \\u escape or write the full surrogate pair") from None
    return text


def _prompt(where: str, value: Any) -> Prompt:
    if _missing(value):
        raise InputError(f"{where}: missing field 'prompt': add the prompt text or a list of chat messages")
    if isinstance(value, str):
        if not value.strip():
            raise InputError(f"{where}: field 'prompt' is empty: give a non-empty prompt")
        return _utf8(where, "field 'prompt'", value)
    if isinstance(value, (list, tuple)):
        if not value:
            raise InputError(f"{where}: field 'prompt' is an empty message list: give at least one {{'role': 'user', 'content': ...}} message")
        messages: list[Message] = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InputError(f"{where}: field 'prompt' message {i} is not an object with string 'role' and 'content': write it as {{\"role\": \"user\", \"content\": \"...\"}}")
            if m["role"] not in CHAT_ROLES:
                raise InputError(f"{where}: field 'prompt' message {i} has role {_show(m['role'])}: use one of {', '.join(CHAT_ROLES)}")
            messages.append({"role": m["role"], "content": _utf8(where, f"field 'prompt' message {i} content", m["content"])})
        if messages[-1]["role"] != "user":
            raise InputError(f"{where}: field 'prompt' ends with a {messages[-1]['role']!r} message: end it with a 'user' message (the response is given separately in 'response')")
        return messages
    raise InputError(f"{where}: field 'prompt' has type {type(value).__name__}: use a string or a list of chat messages")


def _text(where: str, row: dict[str, Any], name: str, required: bool, fix: str) -> str | None:
    value = row.get(name)
    if _missing(value):
        if required:
            raise InputError(f"{where}: missing field '{name}': {fix}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{where}: field '{name}' has type {type(value).__name__}: use a string")
    text = str(value)
    if not text.strip():
        if required:
            raise InputError(f"{where}: field '{name}' is empty: {fix}")
        return None
    return _utf8(where, f"field '{name}'", text)


def _check_unique(ids: list[tuple[str, str]], path: str | Path) -> None:
    seen: dict[str, str] = {}
    prefix = f"{Path(path)}: "
    for where, rid in ids:
        if rid in seen:
            raise InputError(f"{where}: duplicate id {_show(rid)} (first at {seen[rid][len(prefix):]}): give every row a unique id, or drop the id field to use content hashes")
        seen[rid] = where


def load_candidates(path: str | Path, rows: list[tuple[str, dict[str, Any]]] | None = None) -> list[Candidate]:
    """Load and validate candidate rows (prompt, response, strategy; optional id, task, group).

    ``rows`` are the file's rows when the caller already read them with ``read_rows``.
    """
    rows = read_rows(path) if rows is None else rows
    out: list[Candidate] = []
    for where, row in rows:
        prompt = _prompt(where, row.get("prompt"))
        response = _text(where, row, "response", True, "give every candidate a non-empty response")
        strategy = _text(where, row, "strategy", True, "name the strategy that made this response (e.g. direct, cot)")
        task = _text(where, row, "task", False, "")
        group = _text(where, row, "group", False, "") or "g-" + content_hash(prompt)
        rid = _text(where, row, "id", False, "") or content_hash(prompt, response, strategy)
        out.append(Candidate(rid, prompt, response, strategy, task, group))  # type: ignore[arg-type]
    _check_unique([(w, c.id) for (w, _), c in zip(rows, out)], path)
    return out


def load_eval(path: str | Path, rows: list[tuple[str, dict[str, Any]]] | None = None) -> list[EvalItem]:
    """Load and validate eval rows (prompt, response, task; optional id); ``rows`` as for ``load_candidates``."""
    rows = read_rows(path) if rows is None else rows
    out: list[EvalItem] = []
    for where, row in rows:
        prompt = _prompt(where, row.get("prompt"))
        response = _text(where, row, "response", True, "give every eval item its reference response")
        task = _text(where, row, "task", True, "name the eval task of this item (e.g. the subject)")
        rid = _text(where, row, "id", False, "") or content_hash(prompt, response, task)
        out.append(EvalItem(rid, prompt, response, task))  # type: ignore[arg-type]
    _check_unique([(w, e.id) for (w, _), e in zip(rows, out)], path)
    return out


def kind_of(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """'candidates' when every row carries a strategy field, else 'eval'."""
    return "candidates" if all("strategy" in r for _, r in rows) else "eval"


def detect_kind(path: str | Path) -> str:
    """'candidates' when the file's rows carry a strategy field, else 'eval'."""
    return kind_of(read_rows(path))
