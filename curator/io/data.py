"""Candidate and eval rows, their loaders, and validation.

A **candidate** is one response to a prompt, made by one generation strategy. Candidates for
the same prompt share a ``group``. An **eval item** is a prompt with a reference response and a
task. Rows come from JSONL, JSON, CSV, Parquet, or a directory saved by ``datasets``
(curator.io.readers); every validation error names the file, the row and the fix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from curator.errors import InputError
from curator.io.readers import read_rows, short_repr

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
class PromptRow:
    """A prompt to generate candidates for (``curator generate``).

    ``id`` becomes the ``group`` of its candidates; ``fields`` holds every field of the row (the
    ones a strategy's templates may name), with ``prompt`` validated.
    """

    id: str
    prompt: Prompt
    reference: str | None
    task: str | None
    fields: dict[str, Any]
    where: str


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
                raise InputError(f"{where}: field 'prompt' message {i} has role {short_repr(m['role'])}: use one of {', '.join(CHAT_ROLES)}")
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
            raise InputError(f"{where}: duplicate id {short_repr(rid)} (first at {seen[rid][len(prefix):]}): give every row a unique id, or drop the id field to use content hashes")
        seen[rid] = where


def load_candidates(path: str | Path, rows: list[tuple[str, dict[str, Any]]] | None = None) -> list[Candidate]:
    """Load and validate candidate rows (prompt, response, strategy; optional id, task, group).

    Returns a list of ``Candidate`` in file order; a missing id or group becomes a content hash.
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
    """Load and validate eval rows (prompt, response, task; optional id).

    Returns a list of ``EvalItem`` in file order; ``rows`` as for ``load_candidates``.
    """
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


def load_prompts(path: str | Path, rows: list[tuple[str, dict[str, Any]]] | None = None) -> list[PromptRow]:
    """Load and validate prompt rows (prompt; optional reference, task, id, and any other fields).

    A missing id becomes ``g-`` + the prompt's content hash: the group ``load_candidates`` gives a
    candidate of that prompt when it has no group. Two rows with the same id are refused.
    """
    rows = read_rows(path) if rows is None else rows
    out: list[PromptRow] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        prompt = _prompt(where, row.get("prompt"))
        reference = _text(where, row, "reference", False, "")
        task = _text(where, row, "task", False, "")
        rid = _text(where, row, "id", False, "")
        fields = {k: v for k, v in row.items() if not _missing(v)}
        fields["prompt"] = prompt
        key = rid or "g-" + content_hash(prompt)
        if key in seen:
            first = seen[key][len(f"{Path(path)}: ") :]
            what = f"duplicate id {short_repr(rid)}" if rid else "the same prompt again"
            raise InputError(f"{where}: {what} (first at {first}): give every prompt row its own 'id', or remove the repeated row")
        seen[key] = where
        out.append(PromptRow(key, prompt, reference, task, fields, where))
    if not out:
        raise InputError(f"{path}: no prompt rows: add rows with a 'prompt' field")
    return out


def kind_of(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """'candidates' when every row carries a strategy field, else 'eval'."""
    return "candidates" if all("strategy" in r for _, r in rows) else "eval"


def detect_kind(path: str | Path) -> str:
    """'candidates' when the file's rows carry a strategy field, else 'eval'."""
    return kind_of(read_rows(path))


ROLES = ("candidates", "eval")


def load_rows(path: str | Path, role: str = "auto") -> tuple[str, list[Candidate] | list[EvalItem]]:
    """Load a data file as candidates or eval items; 'auto' picks candidates when every row has a strategy."""
    if role not in ROLES + ("auto",):
        raise InputError(f"role {role!r} is unknown: use candidates, eval or auto (--as)")
    raw = read_rows(path)  # read once: detecting the kind and loading share it
    if role == "auto":
        role = kind_of(raw)
    return role, (load_candidates(path, raw) if role == "candidates" else load_eval(path, raw))
