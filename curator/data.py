"""Candidate and eval rows, their loaders, and validation.

A **candidate** is one response to a prompt, made by one generation strategy. Candidates for
the same prompt share a ``group``. An **eval item** is a prompt with a reference response and a
task. Rows come from JSONL, JSON, CSV, Parquet, or a directory saved by ``datasets``; every
validation error names the file, the row and the fix.
"""

from __future__ import annotations

import csv
import hashlib
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


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{path}: line {lineno}: not valid UTF-8: re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: line {lineno}: invalid JSON ({exc.msg} at column {exc.colno}): write one JSON object per line") from None


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        payload = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not valid UTF-8: re-save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}): the file must hold a list of row objects") from None
    if isinstance(payload, dict):
        for key in ("data", "rows", "records"):
            if isinstance(payload.get(key), list):
                payload = payload[key]
                break
    if not isinstance(payload, list):
        raise InputError(f"{path}: expected a JSON list of row objects (or {{\"data\": [...]}}), got {type(payload).__name__}")
    yield from enumerate(payload, start=1)


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not valid UTF-8: re-save the file as UTF-8") from None
    reader = csv.DictReader(text.splitlines(keepends=True))
    if not reader.fieldnames:
        raise InputError(f"{path}: the CSV has no header row: put the column names (prompt,response,...) on line 1")
    for row in reader:
        # line_num is the physical line of the row's end; header is line 1.
        clean = {k: (None if v == "" else v) for k, v in row.items() if k is not None}
        if None in row:
            raise InputError(f"{path}: line {reader.line_num}: more values than header columns: quote fields that contain commas")
        prompt = clean.get("prompt")
        if isinstance(prompt, str) and prompt.lstrip().startswith("["):
            # a JSON list of chat messages; anything else stays a plain prompt string
            try:
                parsed = json.loads(prompt)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, list) and parsed and all(isinstance(m, dict) for m in parsed):
                clean["prompt"] = parsed
        yield reader.line_num, clean


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for bad files
        raise InputError(f"{path}: cannot read as Parquet ({type(exc).__name__}: {exc}): check the file is a valid Parquet file") from None
    yield from enumerate(table.to_pylist(), start=1)


def _read_hf_dir(path: Path) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a directory saved by datasets.save_to_disk ({exc}): point at a data file or a saved dataset") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        if len(splits) != 1:
            raise InputError(f"{path}: a DatasetDict with splits {splits}: point at one split's folder, e.g. {path / splits[0]}")
        ds = ds[splits[0]]
    yield from enumerate(ds.to_list(), start=1)


def read_rows(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a data file as (location, row) pairs; location is 'line N' or 'row N'."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory: check the path")
    if p.is_dir():
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
    for n, row in reader(p):
        where = f"{p}: {unit} {n}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected an object with fields prompt/response/..., got {type(row).__name__}")
        out.append((where, row))
    if not out:
        raise InputError(f"{p}: the file has no rows: add at least one row")
    return out


# --------------------------------------------------------------------------- validation


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _prompt(where: str, value: Any) -> Prompt:
    if _missing(value):
        raise InputError(f"{where}: missing field 'prompt': add the prompt text or a list of chat messages")
    if isinstance(value, str):
        if not value.strip():
            raise InputError(f"{where}: field 'prompt' is empty: give a non-empty prompt")
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise InputError(f"{where}: field 'prompt' is an empty message list: give at least one {{'role': 'user', 'content': ...}} message")
        messages: list[Message] = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InputError(f"{where}: field 'prompt' message {i} must be an object with string 'role' and 'content'")
            if m["role"] not in CHAT_ROLES:
                raise InputError(f"{where}: field 'prompt' message {i} has role {m['role']!r}: use one of {', '.join(CHAT_ROLES)}")
            messages.append({"role": m["role"], "content": m["content"]})
        if messages[-1]["role"] != "user":
            raise InputError(f"{where}: field 'prompt' must end with a 'user' message (the response is given separately in 'response')")
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
    return text


def _check_unique(ids: list[tuple[str, str]], path: str | Path) -> None:
    seen: dict[str, str] = {}
    prefix = f"{Path(path)}: "
    for where, rid in ids:
        if rid in seen:
            raise InputError(f"{where}: duplicate id {rid!r} (first at {seen[rid][len(prefix):]}): give every row a unique id, or drop the id field to use content hashes")
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
