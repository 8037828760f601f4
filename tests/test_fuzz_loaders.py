"""Fuzzing the data loaders: every malformed input is a CuratorError that names the file, the row and the fix.

Each generated case is a small data file (JSONL, JSON, CSV, Parquet, or a ``save_to_disk``
folder) built from valid rows plus at most one known defect, so the case itself knows the
answer: either the loader must load it (and return exactly the rows written), or it must raise
a ``CuratorError`` whose one-line message starts with the file, names the expected line or row
(and field), and ends with a fix. Anything else (another exception, a vague or multi-line
message, a wrong row) fails the test. Runs are derandomised, so CI sees the same inputs.

The cases come from ``tests/fuzz_rows.py`` (valid rows, row defects, writers, the message check)
and ``tests/fuzz_formats.py`` (one strategy per format and defect family).
``pytest -s tests/test_fuzz_loaders.py`` prints how many inputs were tried and handled per
category; with ``CURATOR_FUZZ_REPORT=path.json`` the counts are also written there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from curator.cli.main import cli
from curator.io.data import load_candidates, load_eval
from curator.errors import CuratorError
from curator.io.data import load_rows
from tests.fuzz_formats import WRONG_COLUMNS, arrow_cases, csv_cases, json_cases, jsonl_cases
from tests.fuzz_rows import Case, check_message, expected, loaded, location_of, materialize

STATS: Counter[tuple[str, str]] = Counter()
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck), print_blob=False)


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


loaders = st.sampled_from(["direct", "role", "auto"])


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
