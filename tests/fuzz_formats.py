"""Fuzz case strategies per format (JSONL, JSON, CSV, Parquet, save_to_disk folders) and defect family."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime
from typing import Any, Callable

import pyarrow as pa
from hypothesis import strategies as st

from tests.fuzz_rows import OPTIONAL, REQUIRED, Case, Layout, _count_lines, _huge, _lines, arrow_table, csv_cell, kinds, row_defect, valid_rows

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
