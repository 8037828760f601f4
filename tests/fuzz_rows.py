"""Fuzz cases for the data loaders: valid rows, one known defect per row, writers and the message check.

Used by ``tests/test_fuzz_loaders.py`` (see there). A ``Case`` is a data file to write and what
loading it must give: the rows exactly as written, or a one-line ``CuratorError`` naming the file,
a line or row, a field, and a fix.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

from curator.io.data import CHAT_ROLES, content_hash

REQUIRED = {"candidates": ("prompt", "response", "strategy"), "eval": ("prompt", "response", "task")}
OPTIONAL = {"candidates": ("task", "group", "id"), "eval": ("id",)}
# after what is wrong, the message gives the fix: ": <verb> ..." with one of these verbs
FIX_VERBS = ("add", "give", "use", "write", "re-save", "name", "quote", "check", "point", "put", "end", "remove", "rename", "separate", "close", "fix", "flatten", "drop")


# --------------------------------------------------------------------------- the case


@dataclass
class Layout:
    """Where each row landed in a JSONL/CSV file: (first, last) physical line, 1-based."""

    lines: list[tuple[int, int]] = dc_field(default_factory=list)
    text: str = ""


@dataclass
class Case:
    """A data file to write, and what loading it must give."""

    category: str
    fmt: str  # jsonl | json | csv | parquet | hf
    kind: str  # candidates | eval
    rows: list[Any]
    valid: bool = False
    row: int | None = None  # 0-based row the error must name; None: any location (a file-level error)
    field: str | None = None  # the field the error must name
    location: Callable[[Layout], str] | None = None  # overrides the location derived from ``row``
    edit: Callable[[bytes, Layout], bytes] | None = None  # a byte-level defect applied after writing
    options: dict[str, Any] = dc_field(default_factory=dict)


def _count_lines(text: str) -> int:
    return len(io.StringIO(text, newline="").readlines())


def _lines(text: str) -> list[str]:
    """Physical lines as the CSV reader sees them (only \\n, \\r\\n and \\r end a line)."""
    return io.StringIO(text, newline="").readlines()


# --------------------------------------------------------------------------- valid rows

_chars = st.characters(blacklist_categories=("Cs",))  # every code point but surrogates
_text = st.text(_chars, min_size=1, max_size=20).filter(lambda s: s.strip() != "")
_huge = st.sampled_from([200_000, 1_100_000]).map(lambda n: "long " + "x" * n)  # over csv's 128 KiB field limit


@st.composite
def valid_rows(draw: st.DrawFn, kind: str, fmt: str, chat: bool | None = None) -> list[dict[str, Any]]:
    """1-5 valid rows; prompts are all strings or all chat lists (an Arrow column has one type)."""
    n = draw(st.integers(1, 5))
    chat = draw(st.booleans()) if chat is None else chat
    id_mode = draw(st.sampled_from(["none", "str", "int", "some"]))
    plain = _text.filter(lambda s: not s.lstrip().startswith("[")) if fmt == "csv" else _text  # a CSV cell "[{...}]" is chat JSON
    rows = []
    for i in range(n):
        if chat:
            roles = draw(st.lists(st.sampled_from(CHAT_ROLES), max_size=2)) + ["user"]
            prompt: Any = [{"role": r, "content": draw(st.text(_chars, max_size=15))} for r in roles]
        else:
            prompt = draw(plain)
        row: dict[str, Any] = {"prompt": prompt, "response": draw(_text) + f" #{i}"}
        if kind == "candidates":
            row["strategy"] = draw(_text)
            for opt in ("task", "group"):
                if draw(st.booleans()):
                    row[opt] = draw(_text)
        else:
            row["task"] = draw(_text)
        if id_mode == "str" or (id_mode == "some" and draw(st.booleans())):
            row["id"] = f"id-{i}-" + draw(_text)
        elif id_mode == "int":
            row["id"] = 1000 + i
        rows.append(row)
    return rows


def expected(rows: list[dict[str, Any]], kind: str) -> list[tuple[Any, ...]]:
    """What the loader must return for valid ``rows``."""
    out = []
    for r in rows:
        prompt = r["prompt"] if isinstance(r["prompt"], str) else [{"role": m["role"], "content": m["content"]} for m in r["prompt"]]
        opt = {k: (None if r.get(k) is None or not str(r[k]).strip() else str(r[k])) for k in ("id", "task", "group")}
        response = str(r["response"])
        if kind == "candidates":
            strategy = str(r["strategy"])
            rid = opt["id"] or content_hash(prompt, response, strategy)
            out.append((rid, prompt, response, strategy, opt["task"], opt["group"] or "g-" + content_hash(prompt)))
        else:
            task = str(r["task"])
            out.append((opt["id"] or content_hash(prompt, response, task), prompt, response, task))
    return out


def loaded(items: list[Any]) -> list[tuple[Any, ...]]:
    return [(c.id, c.prompt, c.response, c.strategy, c.task, c.group) if hasattr(c, "strategy") else (c.id, c.prompt, c.response, c.task) for c in items]


# --------------------------------------------------------------------------- row defects (every format)

BAD_TYPES = {"float": 1.5, "inf": float("inf"), "bool": True, "list": ["a"], "dict": {"a": "b"}}


@st.composite
def row_defect(draw: st.DrawFn, rows: list[dict[str, Any]], kind: str, fmt: str, family: str) -> tuple[str, int, str | None, bool]:
    """Damage one row in place with a defect of ``family``; return (category, row index, field to name, still valid)."""
    k = draw(st.integers(0, len(rows) - 1))
    r = rows[k]
    arrow, text_cells = fmt in ("parquet", "hf"), fmt == "csv"
    chat = isinstance(r["prompt"], list)
    if family == "fields":
        choices = ["missing", "empty", "optional-empty"] + ([] if arrow or text_cells else ["nan"])
    elif family == "types":  # JSON formats only: CSV cells are text, an Arrow column has one type
        choices = ["wrong-type", "int-text", "surrogate"]
    elif family == "ids":
        choices = ["duplicate-id"]
    elif chat:
        choices = ["chat-bad-role", "chat-not-user-last", "chat-null-part"]
        choices += [] if text_cells else ["chat-empty"]  # a CSV cell "[]" is plain text
        choices += [] if arrow else ["chat-part-type"]
        choices += [] if arrow or text_cells else ["chat-not-object"]
    else:
        assert text_cells
        choices = ["csv-json-prompt"]
    what = draw(st.sampled_from(choices))
    name = draw(st.sampled_from(REQUIRED[kind]))
    if what == "missing":
        if arrow or draw(st.booleans()):
            r[name] = None
        else:
            del r[name]
        return "missing field", k, name, False
    if what == "empty":
        r[name] = [] if name == "prompt" and chat and not text_cells else draw(st.sampled_from(["", " ", "\t\n ", "\u3000"]))
        return "empty field", k, name, False
    if what == "optional-empty":
        r[draw(st.sampled_from(OPTIONAL[kind]))] = draw(st.sampled_from(["", "  "]))
        if arrow:  # one type per column: "" beside integer ids makes the ids text
            for x in rows:
                x["id"] = None if x.get("id") is None else str(x["id"])
        return "optional field empty (valid)", k, None, True
    if what == "wrong-type":
        name = draw(st.sampled_from(REQUIRED[kind] + OPTIONAL[kind]))
        r[name] = BAD_TYPES[draw(st.sampled_from(sorted(BAD_TYPES)))]
        return "wrong type", k, name, False
    if what == "int-text":  # an integer where text is wanted is fine, except as the prompt
        name = draw(st.sampled_from(REQUIRED[kind] + OPTIONAL[kind]))
        r[name] = 10**40 + k if name == "id" else draw(st.integers(-(10**30), 10**30))
        return ("wrong type", k, "prompt", False) if name == "prompt" else ("integer as text (valid)", k, None, True)
    if what == "nan":
        r[name] = float("nan")
        return "missing field", k, name, False
    if what == "surrogate":  # json.dumps writes "\\udXXX"; json.loads accepts it, UTF-8 cannot hold it
        lone = draw(st.sampled_from(["\ud800", "\udfff", "\ud83d"]))
        name = draw(st.sampled_from(REQUIRED[kind] + ("id",)))
        if name == "prompt" and chat:
            r["prompt"][-1]["content"] += lone
        else:
            r[name] = f"a{lone}b"
        return "lone surrogate", k, name, False
    if what == "duplicate-id":
        if len(rows) == 1:
            rows.append(json.loads(json.dumps(r)))  # same content (or same id) twice
            return "duplicate id", 1, None, False
        j = draw(st.integers(0, len(rows) - 1).filter(lambda j: j != k))
        lo, hi = min(j, k), max(j, k)
        if rows[lo].get("id") is None:
            rows[lo]["id"] = f"dup-{lo}"
        rows[hi]["id"] = rows[lo]["id"]
        if arrow or text_cells:  # one type per column; "7" and 7 are the same id anyway
            for x in rows:
                if x.get("id") is not None:
                    x["id"] = str(x["id"])
        return "duplicate id", hi, None, False
    if what == "csv-json-prompt":
        cell, ok = draw(st.sampled_from([('[{"role": "robot", "content": "x"}]', False), ('[{"text": "x"}]', False), ('[{"role": "assistant", "content": "x"}]', False),
                                         ('["just", "text"]', True), ("[1, 2", True), ("[see above]", True)]))
        r["prompt"] = cell
        return ("CSV prompt cell with chat JSON", k, "prompt", False) if not ok else ("CSV prompt cell like JSON (valid)", k, None, True)
    msgs = r["prompt"]
    i = draw(st.integers(0, len(msgs) - 1))
    if what == "chat-bad-role":
        msgs[i]["role"] = draw(st.sampled_from(["tool", "User", "", "robot", "x" * 5000]))
    elif what == "chat-not-user-last":
        msgs[-1]["role"] = draw(st.sampled_from(["assistant", "system"]))
    elif what == "chat-null-part":
        msgs[i][draw(st.sampled_from(["role", "content"]))] = None
    elif what == "chat-empty":
        r["prompt"] = []
    elif what == "chat-not-object":
        msgs[i] = draw(st.sampled_from(["hello", 3, None, ["user", "hi"]]))
    elif what == "chat-part-type":
        msgs[i][draw(st.sampled_from(["role", "content"]))] = draw(st.sampled_from([1, ["x"], {"text": "x"}, True]))
    return "invalid chat message", k, "prompt", False


# --------------------------------------------------------------------------- writers


def write_jsonl(path: Path, rows: list[Any], blank: list[bool], ascii_only: bool) -> Layout:
    text, lines = "", []
    for r, b in zip(rows, blank):
        if b:
            text += "\n"
        n = _count_lines(text) + 1
        lines.append((n, n))
        text += json.dumps(r, ensure_ascii=ascii_only) + "\n"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))  # a raw lone surrogate becomes invalid UTF-8
    return Layout(lines, text)


def _bom(path: Path) -> None:
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


def csv_cell(v: Any) -> str:
    return "" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def write_csv(path: Path, rows: list[dict[str, Any]], blank: list[bool], crlf: bool, bom: bool) -> Layout:
    cols = list(dict.fromkeys(["prompt", *[c for r in rows for c in r]]))
    buf = io.StringIO(newline="")
    # with "\n" line ends the writer leaves a "\r" inside a field unquoted, and every CSV reader ends the record there
    w = csv.writer(buf, lineterminator="\r\n") if crlf else csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writerow(cols)
    lines = []
    for r, b in zip(rows, blank):
        if b:
            buf.write("\r\n" if crlf else "\n")
        start = _count_lines(buf.getvalue()) + 1
        w.writerow([csv_cell(r.get(c)) for c in cols])
        lines.append((start, _count_lines(buf.getvalue())))
    text = buf.getvalue()
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return Layout(lines, text)


def arrow_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Every key of every row is a column (from_pylist would keep only the first row's keys)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.table({k: pa.array([r.get(k) for r in rows]) for k in keys}) if keys else pa.table({"prompt": pa.array([], pa.string())})


def write_file(case: Case, path: Path) -> Layout:
    o = case.options
    blank = o.get("blank", [False] * 8)
    if case.fmt == "jsonl":
        layout = write_jsonl(path, case.rows, blank, o.get("ascii", True))
        if o.get("bom"):
            _bom(path)
        return layout
    if case.fmt == "json":
        text = json.dumps({"data": case.rows} if o.get("wrapped") else case.rows, indent=o.get("indent"))
        path.write_bytes((b"\xef\xbb\xbf" if o.get("bom") else b"") + text.encode("utf-8"))
        return Layout([], text)
    if case.fmt == "csv":
        return write_csv(path, case.rows, blank, o.get("crlf", False), o.get("bom", False))
    table = o.get("table", arrow_table)(case.rows)
    if case.fmt == "parquet":
        pq.write_table(table, path)
    else:
        import datasets

        datasets.Dataset(datasets.table.InMemoryTable(table)).save_to_disk(str(path))
    return Layout()


# --------------------------------------------------------------------------- checking one case


def check_message(msg: str, path: Path, location: str | None, field_name: str | None) -> None:
    assert "\n" not in msg and "\r" not in msg, f"multi-line message: {msg!r}"
    assert len(msg) < 300 + len(str(path)), f"message too long ({len(msg)} chars): {msg[:300]!r}"
    assert msg.startswith(f"{path}: "), f"message does not start with the file: {msg!r}"
    if location is not None:
        assert msg.startswith(f"{path}: {location}: "), f"expected {location}: {msg!r}"
    if field_name is not None:
        assert f"'{field_name}'" in msg, f"field {field_name!r} not named: {msg!r}"
    rest = msg[len(f"{path}: {location}: ") if location else len(f"{path}: "):]
    assert re.search(rf": ({'|'.join(map(re.escape, FIX_VERBS))}) ", rest), f"no fix (': <verb> ...' after what is wrong): {msg!r}"


def location_of(case: Case, layout: Layout) -> str | None:
    if case.location is not None:
        return case.location(layout)
    if case.row is None:
        return None
    if case.fmt in ("jsonl", "csv"):
        return f"line {layout.lines[case.row][1]}"  # a CSV row is named by its last physical line
    return f"row {case.row + 1}"


def materialize(case: Case, folder: Path) -> tuple[Path, Layout]:
    """Write the case's file (or folder) under ``folder``, with its defect applied."""
    path = folder / ("data" if case.fmt == "hf" else f"data.{case.options.get('suffix', case.fmt)}")
    how = case.options.get("corrupt")
    if case.fmt == "hf" and (how or case.options.get("splits")):
        import datasets

        ds = datasets.Dataset(datasets.table.InMemoryTable(arrow_table(case.rows)))
        if case.options.get("splits"):
            datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(path))
        else:
            ds.save_to_disk(str(path))
            target = {"truncate": next(path.glob("*.arrow")), "garbage": next(path.glob("*.arrow")), "empty": path / "dataset_info.json", "flip-magic": path / "state.json"}[how]
            target.write_bytes(corrupt(target.read_bytes(), how, case.options["at"]))
        return path, Layout()
    layout = write_file(case, path)
    if how:
        path.write_bytes(corrupt(path.read_bytes(), how, case.options["at"]))
    if case.edit is not None:
        path.write_bytes(case.edit(path.read_bytes(), layout))
    return path, layout


def corrupt(data: bytes, how: str, at: float) -> bytes:
    if how == "truncate":
        return data[: int(len(data) * at)]
    if how == "garbage":
        return b"PAR1" + bytes(range(256)) * 3 + b"PAR1"
    if how == "empty":
        return b""
    return data[:4] + b"XXXX" + data[8:-4] + b"RAP1"


kinds = st.sampled_from(["candidates", "eval"])
