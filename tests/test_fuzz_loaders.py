"""Fuzzing the data loaders: every malformed input is a CuratorError that names the file, the row and the fix.

Each generated case is a small data file (JSONL, JSON, CSV, Parquet, or a ``save_to_disk``
folder) built from valid rows plus at most one known defect, so the case itself knows the
answer: either the loader must load it (and return exactly the rows written), or it must raise
a ``CuratorError`` whose one-line message starts with the file, names the expected line or row
(and field), and ends with a fix. Anything else (another exception, a vague or multi-line
message, a wrong row) fails the test. Runs are derandomised, so CI sees the same inputs.

``pytest -s tests/test_fuzz_loaders.py`` prints how many inputs were tried and handled per
category; with ``CURATOR_FUZZ_REPORT=path.json`` the counts are also written there.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from datetime import datetime
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from curator.cli.main import cli
from curator.data import CHAT_ROLES, content_hash, load_candidates, load_eval
from curator.errors import CuratorError
from curator.indexing import load_rows

REQUIRED = {"candidates": ("prompt", "response", "strategy"), "eval": ("prompt", "response", "task")}
OPTIONAL = {"candidates": ("task", "group", "id"), "eval": ("id",)}
# after what is wrong, the message gives the fix: ": <verb> ..." with one of these verbs
FIX_VERBS = ("add", "give", "use", "write", "re-save", "name", "quote", "check", "point", "put", "end", "remove", "rename", "separate", "close", "fix", "flatten", "drop")
STATS: Counter[tuple[str, str]] = Counter()
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck), print_blob=False)


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


def call_loader(case: Case, path: Path, loader: str) -> list[Any]:
    if loader == "direct":
        return (load_candidates if case.kind == "candidates" else load_eval)(path)
    role = case.kind
    rows = [r for r in case.rows if isinstance(r, dict)]
    has = [("strategy" in r) for r in rows]
    # auto must pick the case's kind: every row keeps its strategy key (in CSV/Arrow, one row having the column is enough)
    if loader == "auto" and len(rows) == len(case.rows) and (all(has) if case.fmt in ("json", "jsonl") else any(has)) == (case.kind == "candidates"):
        role = "auto"
    return load_rows(path, role)[1]


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


def run_case(case: Case, base: Path, loader: str) -> None:
    folder = Path(tempfile.mkdtemp(dir=base))
    try:
        path, layout = materialize(case, folder)
        STATS[(case.category, "tried")] += 1
        try:
            got = call_loader(case, path, loader)
        except CuratorError as exc:
            assert not case.valid, f"valid input refused ({case.category}): {exc}"
            check_message(str(exc), path, location_of(case, layout), case.field)
        else:
            assert case.valid, f"malformed input loaded ({case.category}, row {case.row})"
            assert loaded(got) == expected(case.rows, case.kind)
        STATS[(case.category, "handled")] += 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import datasets

    datasets.disable_progress_bars()
    yield tmp_path_factory.mktemp("fuzz")
    cats = sorted({c for c, _ in STATS})
    tried, handled = sum(STATS[(c, "tried")] for c in cats), sum(STATS[(c, "handled")] for c in cats)
    table = [f"{c:40} {STATS[(c, 'tried')]:6d} {STATS[(c, 'handled')]:8d}" for c in cats]
    print(f"\nloader fuzzing: inputs tried / handled correctly\n{'category':40} {'tried':>6} {'handled':>8}\n" + "\n".join(table) + f"\n{'TOTAL':40} {tried:6d} {handled:8d}")
    if os.environ.get("CURATOR_FUZZ_REPORT"):
        report = {"tried": tried, "handled": handled, "categories": {c: {"tried": STATS[(c, "tried")], "handled": STATS[(c, "handled")]} for c in cats}}
        Path(os.environ["CURATOR_FUZZ_REPORT"]).write_text(json.dumps(report, indent=1) + "\n")


class Tally:
    """Inputs one test tried and handled, checked against a minimum."""

    def __init__(self) -> None:
        self.start = dict(STATS)

    def check(self, at_least: int) -> None:
        def total(d: dict[tuple[str, str], int], what: str) -> int:
            return sum(v for (_, w), v in d.items() if w == what)

        tried = total(STATS, "tried") - total(self.start, "tried")
        handled = total(STATS, "handled") - total(self.start, "handled")
        assert tried == handled and tried >= at_least, (tried, handled)


kinds = st.sampled_from(["candidates", "eval"])
loaders = st.sampled_from(["direct", "role", "auto"])


# --------------------------------------------------------------------------- JSONL


def _replace_line(line_no: int, new: bytes) -> Callable[[bytes, Layout], bytes]:
    def edit(data: bytes, layout: Layout) -> bytes:
        lines = data.split(b"\n")
        lines[line_no - 1] = new
        return b"\n".join(lines)

    return edit


def _insert_bytes(line_no: int, at: float, junk: bytes) -> Callable[[bytes, Layout], bytes]:
    def edit(data: bytes, layout: Layout) -> bytes:
        lines = data.split(b"\n")
        target = lines[line_no - 1]
        cut = int(len(target) * at)
        lines[line_no - 1] = target[:cut] + junk + target[cut:]
        return b"\n".join(lines)

    return edit


BROKEN_LINES = [
    lambda line: line[: max(1, len(line) // 2)],  # cut short
    lambda line: line[:-1],  # no closing brace
    lambda line: line + " x",  # trailing garbage
    lambda line: line + line,  # two objects on one line
    lambda line: "{'prompt': 'P', 'response': 'R'}",  # Python, not JSON
    lambda line: '{"prompt": "P", "response": "R",}',  # trailing comma
    lambda line: "[" * 5000,  # deeper than the recursion limit
    lambda line: '{"prompt": ' + "9" * 5000 + "}",  # an integer json refuses to convert
    lambda line: "\x00\x01 binary",
    lambda line: '{"prompt": "unterminated',
]
NON_OBJECTS = [[1, 2], "a string", 3, None, True, 1.5, [{"prompt": "P"}]]
JUNK = [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80abc"]


@st.composite
def jsonl_cases(draw: st.DrawFn, mode: str) -> Case:
    kind = draw(kinds)
    rows = draw(valid_rows(kind, "jsonl", chat=True if mode == "row-chat" and "jsonl" != "csv" else None))
    opts = {"blank": draw(st.lists(st.booleans(), min_size=8, max_size=8)), "ascii": draw(st.booleans()), "bom": draw(st.booleans()), "suffix": draw(st.sampled_from(["jsonl", "ndjson"]))}
    if mode == "valid":
        return Case("valid rows", "jsonl", kind, rows, valid=True, options=opts)
    if mode.startswith("row-"):
        category, k, name, ok = draw(row_defect(rows, kind, "jsonl", mode[4:]))
        if category == "lone surrogate" and not opts["ascii"]:
            name = None  # written raw, the surrogate is a non-UTF-8 byte sequence: the line is named, not the field
        return Case(category, "jsonl", kind, rows, valid=ok, row=k, field=name, options=opts)
    k = draw(st.integers(0, len(rows) - 1))
    if mode == "broken":
        bad = draw(st.sampled_from(BROKEN_LINES))(json.dumps(rows[k]))
        return Case("broken JSON line", "jsonl", kind, rows, row=k, edit=lambda d, lay: _replace_line(lay.lines[k][0], bad.encode())(d, lay), options=opts)
    if mode == "non-object":
        rows[k] = draw(st.sampled_from(NON_OBJECTS))
        return Case("row is not an object", "jsonl", kind, rows, row=k, options=opts)
    if mode == "non-utf8":
        junk, at = draw(st.sampled_from(JUNK)), draw(st.floats(0, 1))
        return Case("non-UTF-8 bytes", "jsonl", kind, rows, row=k, edit=lambda d, lay: _insert_bytes(lay.lines[k][0], at, junk)(d, lay), options=opts)
    if mode == "huge":
        return huge_case(draw, rows, kind, "jsonl", k, opts)
    opts["blank"] = [True] * 8
    return Case("no rows", "jsonl", kind, [], edit=lambda d, lay: draw(st.sampled_from([b"", b"\n", b"  \n\t\n", b"\r\n"])), options=opts)


def huge_case(draw: st.DrawFn, rows: list[dict[str, Any]], kind: str, fmt: str, k: int, opts: dict[str, Any]) -> Case:
    """A megabyte-long field: fine on its own; with a defect elsewhere in the row, the message stays short."""
    big = draw(_huge)
    name = draw(st.sampled_from(["prompt", "response", REQUIRED[kind][2]]))
    if name == "prompt" and isinstance(rows[k]["prompt"], list):
        rows[k]["prompt"][-1]["content"] = big
    else:
        rows[k][name] = big
    if draw(st.booleans()):
        return Case("huge field (valid)", fmt, kind, rows, valid=True, options=opts)
    other = next(f for f in REQUIRED[kind] if f != name)
    rows[k][other] = None
    return Case("huge field + missing field", fmt, kind, rows, row=k, field=other, options=opts)



# --------------------------------------------------------------------------- JSON (a list, or {"data": [...]})


@st.composite
def json_cases(draw: st.DrawFn, mode: str) -> Case:
    kind = draw(kinds)
    rows = draw(valid_rows(kind, "json", chat=True if mode == "row-chat" and "json" != "csv" else None))
    opts = {"wrapped": draw(st.booleans()), "indent": draw(st.sampled_from([None, 1])), "bom": draw(st.booleans())}
    if mode == "valid":
        return Case("valid rows", "json", kind, rows, valid=True, options=opts)
    if mode.startswith("row-"):
        category, k, name, ok = draw(row_defect(rows, kind, "json", mode[4:]))
        return Case(category, "json", kind, rows, valid=ok, row=k, field=name, options=opts)
    k = draw(st.integers(0, len(rows) - 1))
    if mode == "non-object":
        rows[k] = draw(st.sampled_from(NON_OBJECTS))
        return Case("row is not an object", "json", kind, rows, row=k, options=opts)
    if mode == "huge":
        return huge_case(draw, rows, kind, "json", k, opts)
    if mode == "syntax":
        cut = draw(st.floats(0.05, 0.95))
        how = draw(st.sampled_from(["cut", "garbage", "deep", "bigint", "comma"]))
        edits = {
            "cut": lambda d, lay: d[: max(1, int(len(d) * cut))],
            "garbage": lambda d, lay: d + b" trailing",
            "deep": lambda d, lay: b"[" * 5000 + b"]" * 5000,
            "bigint": lambda d, lay: b"[" + b"1" * 5000 + b"]",
            "comma": lambda d, lay: d[:-1] + b",]" if d.endswith(b"]") else d + b",",
        }
        return Case("broken JSON file", "json", kind, rows, edit=edits[how], options=opts)
    if mode == "top-level":
        payload = draw(st.sampled_from([{"items": rows}, {"data": 5}, "rows", 42, None, [], {"data": []}]))
        return Case("JSON top level not a list of rows", "json", kind, rows, edit=lambda d, lay: json.dumps(payload).encode(), options=opts)
    junk, at = draw(st.sampled_from(JUNK)), draw(st.floats(0, 1))
    line_of = {}

    def non_utf8(d: bytes, lay: Layout) -> bytes:
        cut = int(len(d) * at)
        line_of["n"] = d.count(b"\n", 0, cut) + 1
        return d[:cut] + junk + d[cut:]

    return Case("non-UTF-8 bytes", "json", kind, rows, edit=non_utf8, location=lambda lay: f"line {line_of['n']}", options=opts)



# --------------------------------------------------------------------------- CSV


def _csv_edit(fn: Callable[[list[str], Layout], list[str]]) -> Callable[[bytes, Layout], bytes]:
    """Edit the CSV's physical lines (the BOM, if any, is kept)."""

    def edit(data: bytes, layout: Layout) -> bytes:
        bom = b"\xef\xbb\xbf" if data.startswith(b"\xef\xbb\xbf") else b""
        return bom + "".join(fn(_lines(data[len(bom) :].decode("utf-8")), layout)).encode("utf-8")

    return edit


def _ending(line: str) -> tuple[str, str]:
    body = line.rstrip("\r\n")
    return body, line[len(body) :]


@st.composite
def csv_cases(draw: st.DrawFn, mode: str) -> Case:
    kind = draw(kinds)
    rows = draw(valid_rows(kind, "csv", chat=True if mode == "row-chat" and "csv" != "csv" else None))
    opts = {"blank": draw(st.lists(st.booleans(), min_size=8, max_size=8)), "crlf": draw(st.booleans()), "bom": draw(st.booleans())}
    if mode == "valid":
        return Case("valid rows", "csv", kind, rows, valid=True, options=opts)
    if mode.startswith("row-"):
        category, k, name, ok = draw(row_defect(rows, kind, "csv", mode[4:]))
        return Case(category, "csv", kind, rows, valid=ok, row=k, field=name, options=opts)
    k = draw(st.integers(0, len(rows) - 1))
    if mode == "extra":  # more values than header columns

        def extra(lines: list[str], lay: Layout) -> list[str]:
            body, end = _ending(lines[lay.lines[k][1] - 1])
            lines[lay.lines[k][1] - 1] = body + ",extra" + end
            return lines

        return Case("CSV row with extra values", "csv", kind, rows, row=k, edit=_csv_edit(extra), options=opts)
    if mode == "fewer":  # the row stops after its prompt: the next required field is missing
        short = io.StringIO(newline="")
        csv.writer(short, lineterminator="\n").writerow([csv_cell(rows[k]["prompt"])])
        cell = short.getvalue()

        def fewer(lines: list[str], lay: Layout) -> list[str]:
            start, end = lay.lines[k]
            return lines[: start - 1] + [cell] + lines[end:]

        n_cell = _count_lines(cell)
        return Case("CSV row with fewer values", "csv", kind, rows, field="response", location=lambda lay: f"line {lay.lines[k][0] + n_cell - 1}", edit=_csv_edit(fewer), options=opts)
    if mode == "unclosed":  # a quote that never closes swallows the rest of the file

        def unclosed(lines: list[str], lay: Layout) -> list[str]:
            return lines + ['"P, never closed,R,s\n', "more,text\n"]

        return Case("CSV unterminated quote", "csv", kind, rows, location=lambda lay: f"line {_count_lines(lay.text) + 1}", edit=_csv_edit(unclosed), options=opts)
    if mode == "after-quote":

        def after_quote(lines: list[str], lay: Layout) -> list[str]:
            end = lay.lines[k][1]
            return lines[:end] + ['"P"x,R,s\n'] + lines[end:]

        return Case("CSV text after a closing quote", "csv", kind, rows, location=lambda lay: f"line {lay.lines[k][1] + 1}", edit=_csv_edit(after_quote), options=opts)
    if mode == "dup-header":
        dup = draw(st.sampled_from(REQUIRED[kind]))

        def dup_header(lines: list[str], lay: Layout) -> list[str]:
            body, end = _ending(lines[0])
            lines[0] = body + "," + dup + end
            return lines

        return Case("CSV duplicate header column", "csv", kind, rows, field=dup, location=lambda lay: "line 1", edit=_csv_edit(dup_header), options=opts)
    if mode == "semicolons":
        sep = draw(st.sampled_from([";", "\t", "|"]))

        def semicolons(lines: list[str], lay: Layout) -> list[str]:
            body, end = _ending(lines[0])
            lines[0] = body.replace(",", sep) + end
            return lines

        return Case("CSV with another separator", "csv", kind, rows, location=lambda lay: "line 1", edit=_csv_edit(semicolons), options=opts)
    if mode == "non-utf8":
        junk, at = draw(st.sampled_from(JUNK)), draw(st.floats(0, 1))
        line_of = {}

        def non_utf8(data: bytes, lay: Layout) -> bytes:
            pos = lay.lines[k][0]  # the first physical line of row k
            offsets = [m.end() for m in re.finditer(b"\n", data)]
            line_start = ([0] + offsets)[pos - 1]
            line_end = offsets[pos - 1] - 1 if pos - 1 < len(offsets) else len(data)
            cut = line_start + int((line_end - line_start) * at)
            line_of["n"] = len(_lines(data[:cut].decode("utf-8", "ignore") + "."))  # \r alone ends a CSV line too
            return data[:cut] + junk + data[cut:]

        return Case("non-UTF-8 bytes", "csv", kind, rows, location=lambda lay: f"line {line_of['n']}", edit=non_utf8, options=opts)
    if mode == "huge":
        return huge_case(draw, rows, kind, "csv", k, opts)
    content = draw(st.sampled_from([b"", b"prompt,response,strategy,task\n", b"\xef\xbb\xbf", b"prompt,response\r\n\r\n"]))
    return Case("no rows / no header", "csv", kind, rows, edit=lambda d, lay: content, options=opts)



# --------------------------------------------------------------------------- Parquet and save_to_disk folders

WRONG_COLUMNS = {  # the whole column of a required field gets this type: (values for n rows, valid for text fields)
    "int64": (lambda n: [7000 + i for i in range(n)], True),
    "float64": (lambda n: [1.5 + i for i in range(n)], False),
    "bool": (lambda n: [i % 2 == 0 for i in range(n)], False),
    "binary": (lambda n: [b"\xff\x00" + bytes([i]) for i in range(n)], False),
    "list<int64>": (lambda n: [[i, 1] for i in range(n)], False),
    "struct": (lambda n: [{"text": f"x{i}"} for i in range(n)], False),
    "timestamp": (lambda n: [datetime(2020, 1, 1 + i) for i in range(n)], False),
    "null": (lambda n: [None] * n, False),
}


def _with_column(name: str, array: Callable[[int], pa.Array]) -> Callable[[list[dict[str, Any]]], pa.Table]:
    def table(rows: list[dict[str, Any]]) -> pa.Table:
        t = arrow_table(rows)
        return t.append_column(name, array(len(rows)))

    return table


@st.composite
def arrow_cases(draw: st.DrawFn, fmt: str, mode: str) -> Case:
    kind = draw(kinds)
    rows = draw(valid_rows(kind, fmt, chat=True if mode == "row-chat" else None))
    for r in rows:  # one type per column: a missing key is a null
        for key in ("task", "group", "id"):
            r.setdefault(key, None)
        if kind == "eval":
            del r["group"]
    if mode == "valid":
        return Case("valid rows", fmt, kind, rows, valid=True)
    if mode.startswith("row-"):
        category, k, name, ok = draw(row_defect(rows, kind, fmt, mode[4:]))
        return Case(category, fmt, kind, rows, valid=ok, row=k, field=name)
    if mode.startswith("column-"):
        name = draw(st.sampled_from(REQUIRED[kind] + OPTIONAL[kind]))
        arrow_type = mode[len("column-"):]
        values, text_ok = WRONG_COLUMNS[arrow_type]
        for r, v in zip(rows, values(len(rows))):
            r[name] = v
        ok = (text_ok and name != "prompt") or (arrow_type == "null" and name in OPTIONAL[kind])
        return Case(f"wrong column type ({arrow_type})" + (" (valid)" if ok else ""), fmt, kind, rows, valid=ok, row=None if ok else 0, field=None if ok else name)
    if mode == "drop-column":
        name = draw(st.sampled_from(REQUIRED[kind]))
        for r in rows:
            del r[name]
        return Case("missing column", fmt, kind, rows, row=0, field=name)
    k = draw(st.integers(0, len(rows) - 1))
    if mode == "timestamp":  # a value pyarrow cannot turn into a Python object
        ts = lambda n: pa.array([10**15 if i == k else 0 for i in range(n)], type=pa.timestamp("s"))  # noqa: E731
        return Case("value with no Python form", fmt, kind, rows, row=k, field="when", options={"table": _with_column("when", ts)})
    if mode == "dup-column":
        return Case("duplicate column", fmt, kind, rows, field="prompt", options={"table": _with_column("prompt", lambda n: pa.array(["again"] * n))})
    if mode == "huge":
        return huge_case(draw, rows, kind, fmt, k, {})
    if mode == "empty":
        return Case("no rows", fmt, kind, rows, options={"table": lambda rows: arrow_table(rows).slice(0, 0)})
    if mode == "dataset-dict":

        def two_splits(data: bytes, lay: Layout) -> bytes:
            return data

        return Case("DatasetDict with two splits", fmt, kind, rows, options={"splits": 2})
    how = draw(st.sampled_from(["truncate", "garbage", "empty", "flip-magic"]))
    return Case("corrupt file", fmt, kind, rows, options={"corrupt": how, "at": draw(st.floats(0.1, 0.9))})


def corrupt(data: bytes, how: str, at: float) -> bytes:
    if how == "truncate":
        return data[: int(len(data) * at)]
    if how == "garbage":
        return b"PAR1" + bytes(range(256)) * 3 + b"PAR1"
    if how == "empty":
        return b""
    return data[:4] + b"XXXX" + data[8:-4] + b"RAP1"


# --------------------------------------------------------------------------- the fuzz tests: one per format and defect family

# examples per (format, defect family); derandomised, so every run tries the same inputs
ROWS = {"row-fields": 50, "row-types": 50, "row-chat": 50, "row-ids": 20}
ARROW_ROWS = {"row-fields": 30, "row-chat": 30, "row-ids": 15}
MODES: dict[str, dict[str, int]] = {
    "jsonl": {"valid": 40, **ROWS, "broken": 50, "non-object": 30, "non-utf8": 40, "huge": 16, "empty": 10},
    "json": {"valid": 30, **ROWS, "non-object": 25, "huge": 12, "syntax": 40, "top-level": 20, "non-utf8": 30},
    "csv": {"valid": 40, "row-fields": 50, "row-chat": 50, "row-ids": 20, "extra": 30, "fewer": 30, "unclosed": 20, "after-quote": 20, "dup-header": 20, "semicolons": 20, "non-utf8": 40, "huge": 16, "empty": 10},
    "parquet": {"valid": 30, **ARROW_ROWS, **{f"column-{t}": 10 for t in WRONG_COLUMNS}, "drop-column": 20, "timestamp": 20, "dup-column": 10, "corrupt": 30, "empty": 10, "huge": 10},
    "hf": {"valid": 10, "row-fields": 8, "row-chat": 8, "row-ids": 5, **{f"column-{t}": 3 for t in WRONG_COLUMNS}, "drop-column": 5, "timestamp": 5, "corrupt": 12, "empty": 5, "dataset-dict": 5},
}
CASES: dict[str, Callable[[str], st.SearchStrategy[Case]]] = {
    "jsonl": jsonl_cases,
    "json": json_cases,
    "csv": csv_cases,
    "parquet": lambda mode: arrow_cases("parquet", mode),
    "hf": lambda mode: arrow_cases("hf", mode),
}
RAN: set[tuple[str, str]] = set()


@pytest.mark.parametrize("fmt, mode", [(f, m) for f, modes in MODES.items() for m in modes])
def test_fuzz_loaders(base: Path, fmt: str, mode: str) -> None:
    tally = Tally()

    @given(case=CASES[fmt](mode), loader=loaders)
    @fuzz_settings(MODES[fmt][mode])
    def fuzz(case: Case, loader: str) -> None:
        run_case(case, base, loader)

    fuzz()
    tally.check(1)
    RAN.add((fmt, mode))


# --------------------------------------------------------------------------- paths that are not data files

ODD_PATHS = [
    ("missing file", lambda d: d / "nope.jsonl"),
    ("unsupported suffix", lambda d: _touch(d / "rows.txt", b"prompt,response\n")),
    ("unsupported suffix", lambda d: _touch(d / "rows.xlsx", b"PK\x03\x04")),
    ("unsupported suffix", lambda d: _touch(d / "rows", b"{}")),
    ("plain folder", lambda d: _mkdir(d / "folder")),
    ("plain folder", lambda d: _mkdir(d / "rows.jsonl")),
    ("name too long", lambda d: d / ("x" * 300 + ".jsonl")),
]


def _touch(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _mkdir(p: Path) -> Path:
    p.mkdir()
    (p / "notes.txt").write_text("hi")
    return p


@pytest.mark.parametrize("category, make", ODD_PATHS)
@pytest.mark.parametrize("kind", ["candidates", "eval"])
def test_odd_paths(base: Path, tmp_path: Path, category: str, make: Callable[[Path], Path], kind: str) -> None:
    p = make(tmp_path)
    STATS[(category, "tried")] += 1
    for load in (load_candidates if kind == "candidates" else load_eval, lambda q: load_rows(q, "auto")):
        with pytest.raises(CuratorError) as ei:
            load(p)
        check_message(str(ei.value), p, None, None)
    STATS[(category, "handled")] += 1


def test_fuzz_total_is_at_least_1000(base: Path) -> None:
    """Runs last: with every fuzz test run, at least 1,000 inputs were tried and every one was handled."""
    if len(RAN) < sum(len(m) for m in MODES.values()):
        pytest.skip("only part of the fuzz tests ran")
    tried = sum(v for (c, w), v in STATS.items() if w == "tried" and not c.startswith("(CLI)"))
    handled = sum(v for (c, w), v in STATS.items() if w == "handled" and not c.startswith("(CLI)"))
    assert tried == handled and tried >= 1000, (tried, handled)


# --------------------------------------------------------------------------- through the CLI

MALFORMED = [(f, m) for f, modes in MODES.items() for m in modes if m not in ("valid", "huge")]


@pytest.mark.parametrize("fmt, mode", MALFORMED)
def test_cli_renders_malformed_input_as_one_line_exit_2(base: Path, fmt: str, mode: str) -> None:
    """Two malformed inputs per defect family through `curator index` or `align`: exit 2, the loader's one line, no traceback, nothing written."""
    seen: list[str] = []

    @given(case=CASES[fmt](mode), command=st.sampled_from(["index", "align"]))
    @fuzz_settings(2)
    def through_cli(case: Case, command: str) -> None:
        assume(not case.valid)
        folder = Path(tempfile.mkdtemp(dir=base))
        try:
            path, layout = materialize(case, folder)
            out = folder / "out"
            if command == "index" or case.kind == "eval":
                args = ["index", str(path), "--out", str(out), "--as", case.kind, "--model", "tiny-random"]
                load: Callable[[], Any] = lambda: load_rows(path, case.kind)  # noqa: E731
            else:
                args = ["align", str(path), "--out", str(out / "scores.parquet"), "--model", "tiny-random"]
                load = lambda: load_candidates(path)  # noqa: E731
            with pytest.raises(CuratorError) as ei:
                load()
            check_message(str(ei.value), path, location_of(case, layout), case.field)
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
            assert result.stderr.splitlines() == [f"error: {ei.value}"]
            assert "Traceback" not in result.output and result.stdout == ""
            assert not out.exists()  # a refused input writes nothing
            seen.append(case.category)
            STATS[("(CLI) " + case.category, "tried")] += 1
            STATS[("(CLI) " + case.category, "handled")] += 1
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    through_cli()
    assert seen
