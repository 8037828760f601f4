"""Tests for curator.influence.study: the swift study of strategies by relative influence."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from curator.errors import InputError
from curator.influence.study import eval_tasks, run_study, write_report


def _row(cid: str, strategy: str, task: str | None, group: str, a: float, b: float) -> dict:
    return {
        "id": cid,
        "strategy": strategy,
        "task": task,
        "group": group,
        "influence:A": a,
        "influence:B": b,
        "influence_max": max(a, b),
        "influence_mean": (a + b) / 2,
    }


def hand_table() -> pd.DataFrame:
    """2 eval tasks, 3 strategies, 4 groups (g1, g2 on task A; g3, g4 on task B); clarify lacks g4."""
    spec = {
        "direct": {"g1": (0.10, 0.02), "g2": (0.20, 0.04), "g3": (0.00, 0.30), "g4": (0.06, 0.10)},
        "cot": {"g1": (0.15, 0.00), "g2": (0.30, 0.10), "g3": (0.04, 0.40), "g4": (0.02, 0.30)},
        "clarify": {"g1": (0.05, 0.05), "g2": (0.20, 0.00), "g3": (0.00, 0.20)},
    }
    own = {"g1": "A", "g2": "A", "g3": "B", "g4": "B"}
    rows = [
        _row(f"{s}-{g}", s, own[g], g, a, b) for s, groups in spec.items() for g, (a, b) in groups.items()
    ]
    return pd.DataFrame(rows)


def planted_table(n_groups: int = 12) -> pd.DataFrame:
    """Baseline with noisy per-group values; 'up' is +0.1 in-task on every group, 'down' −0.1, 'same' equal."""
    rng = np.random.default_rng(7)
    rows = []
    for g in range(n_groups):
        task = "A" if g % 2 == 0 else "B"
        a, b = rng.normal(0.1, 0.05, size=2)
        for strategy, shift in (("direct", 0.0), ("up", 0.1), ("down", -0.1), ("same", 0.0)):
            da = shift if task == "A" else 0.0
            db = shift if task == "B" else 0.0
            rows.append(_row(f"{strategy}-{g}", strategy, task, f"g{g}", a + da, b + db))
    return pd.DataFrame(rows)


def test_eval_tasks_sorted_and_ignores_summary_columns() -> None:
    table = hand_table().rename(columns={"influence:A": "influence:zeta"})
    assert eval_tasks(table) == ["B", "zeta"]


def test_hand_computed_numbers() -> None:
    result = run_study(hand_table(), n_boot=200)
    assert result["baseline"] == "direct"
    assert result["strategies"] == ["direct", "clarify", "cot"]
    assert result["eval_tasks"] == ["A", "B"]
    assert result["n_candidates"] == 11

    mean = result["mean"]
    assert mean["direct"]["A"] == pytest.approx(0.09)
    assert mean["direct"]["B"] == pytest.approx(0.115)
    assert mean["cot"]["A"] == pytest.approx(0.1275)
    assert mean["cot"]["B"] == pytest.approx(0.2)
    assert mean["clarify"]["A"] == pytest.approx(0.25 / 3)
    assert mean["clarify"]["B"] == pytest.approx(0.25 / 3)

    rel = result["relative"]
    assert rel["direct"] == {"A": pytest.approx(0.0), "B": pytest.approx(0.0)}
    assert rel["cot"]["A"] == pytest.approx(0.0375)
    assert rel["cot"]["B"] == pytest.approx(0.085)
    assert rel["clarify"]["A"] == pytest.approx(0.25 / 3 - 0.09)
    assert rel["clarify"]["B"] == pytest.approx(0.25 / 3 - 0.115)

    # in-task diffs cot: .05, .10, .10, .20; cross-task: -.02, .06, .04, -.04
    assert result["in_task"]["cot"]["mean_diff"] == pytest.approx(0.1125)
    assert result["in_task"]["cot"]["n_probes"] == 4
    assert result["cross_task"]["cot"]["mean_diff"] == pytest.approx(0.01)
    # clarify: in-task -.05, 0, -.10; cross-task .03, -.04, 0; g4 skipped
    assert result["in_task"]["clarify"]["mean_diff"] == pytest.approx(-0.05)
    assert result["cross_task"]["clarify"]["mean_diff"] == pytest.approx(-0.01 / 3)
    assert result["in_task"]["clarify"]["n_probes"] == 3
    assert result["skipped_groups"] == {"clarify": 1, "cot": 0}
    assert "direct" not in result["in_task"] and "direct" not in result["verdicts"]

    # the interval is within the range of the per-probe differences and holds the mean
    cot = result["in_task"]["cot"]
    assert 0.05 <= cot["low"] <= cot["mean_diff"] <= cot["high"] <= 0.20


def test_candidates_in_one_group_are_averaged_and_foreign_tasks_ignored() -> None:
    table = hand_table()
    extra = pd.DataFrame(
        [
            _row("cot-g1-bis", "cot", "A", "g1", 0.25, 0.04),  # cot g1 in-task becomes (0.15+0.25)/2 = 0.20
            _row("cot-g2-x", "cot", "other", "g2", 9.0, 9.0),  # own task not an eval task: no in/cross score
        ]
    )
    result = run_study(pd.concat([table, extra], ignore_index=True), n_boot=50)
    # in-task diffs: .10, .10, .10, .20 ; cross-task g1: (0+0.04)/2 - .02 = 0, then .06, .04, -.04
    assert result["in_task"]["cot"]["mean_diff"] == pytest.approx(0.125)
    assert result["cross_task"]["cot"]["mean_diff"] == pytest.approx(0.015)
    assert result["mean"]["cot"]["A"] == pytest.approx((0.51 + 0.25 + 9.0) / 6)


def test_planted_verdicts() -> None:
    result = run_study(planted_table(), n_boot=500)
    assert result["in_task"]["up"]["verdict"] == "better"
    assert result["in_task"]["up"]["mean_diff"] == pytest.approx(0.1)
    assert result["in_task"]["down"]["verdict"] == "worse"
    assert result["in_task"]["same"]["verdict"] == "indistinguishable"
    for s in ("up", "down", "same"):
        assert result["cross_task"][s]["verdict"] == "indistinguishable"
        assert result["cross_task"][s]["mean_diff"] == pytest.approx(0.0, abs=1e-12)
    line = result["verdicts"]["up"]
    assert line.startswith("up: better than direct in-task (+0.1000 [+0.1000, +0.1000], 12 probes);")
    assert "indistinguishable cross-task (+0.0000" in line
    assert result["verdicts"]["down"].startswith("down: worse than direct in-task (-0.1000")
    assert result["verdicts"]["same"].startswith("same: indistinguishable from direct in-task")


def test_too_few_probes() -> None:
    table = planted_table()
    table = table[(table["strategy"] != "up") | (table["group"] == "g0")]
    result = run_study(table, n_boot=100)
    entry = result["in_task"]["up"]
    assert entry["n_probes"] == 1
    assert entry["low"] is None and entry["high"] is None
    assert entry["verdict"] == "indistinguishable"
    assert entry["note"] == "too few probes"
    assert "too few probes" in result["verdicts"]["up"]
    assert result["skipped_groups"]["up"] == 11


def test_bootstrap_is_seeded() -> None:
    table = hand_table()
    first = run_study(table, n_boot=300, seed=3)
    second = run_study(table, n_boot=300, seed=3)
    other = run_study(table, n_boot=300, seed=4)
    for part in ("in_task", "cross_task"):
        for s in ("cot", "clarify"):
            assert (first[part][s]["low"], first[part][s]["high"]) == (
                second[part][s]["low"],
                second[part][s]["high"],
            )
    intervals = lambda r: [(r[p][s]["low"], r[p][s]["high"]) for p in ("in_task", "cross_task") for s in ("cot", "clarify")]  # noqa: E731
    assert intervals(first) != intervals(other)


def test_interval_does_not_depend_on_other_strategies() -> None:
    table = hand_table()
    alone = run_study(table[table["strategy"] != "clarify"], n_boot=300)
    together = run_study(table, n_boot=300)
    assert alone["in_task"]["cot"] == together["in_task"]["cot"]


def test_baseline_choice_and_errors() -> None:
    table = hand_table()
    result = run_study(table, baseline="cot", n_boot=50)
    assert result["baseline"] == "cot"
    assert result["strategies"] == ["cot", "clarify", "direct"]
    assert result["in_task"]["direct"]["mean_diff"] == pytest.approx(-0.1125)

    with pytest.raises(InputError, match="clarify, cot, direct") as err:
        run_study(table, baseline="selfeval")
    assert "--baseline" in str(err.value)

    no_direct = table[table["strategy"] != "direct"]
    with pytest.raises(InputError, match="direct") as err:
        run_study(no_direct)
    assert "clarify, cot" in str(err.value) and "--baseline" in str(err.value)

    with pytest.raises(InputError, match="single strategy"):
        run_study(table[table["strategy"] == "direct"])


def test_input_errors() -> None:
    table = hand_table()
    with pytest.raises(InputError, match="empty"):
        run_study(table.iloc[0:0])
    with pytest.raises(InputError, match="group"):
        run_study(table.drop(columns=["group"]))
    with pytest.raises(InputError, match="influence:"):
        run_study(table.drop(columns=["influence:A", "influence:B"]))
    with pytest.raises(InputError, match="confidence"):
        run_study(table, confidence=1.5)
    with pytest.raises(InputError, match="n_boot"):
        run_study(table, n_boot=0)


def test_write_report(tmp_path) -> None:
    result = run_study(hand_table(), n_boot=200)
    paths = write_report(result, tmp_path / "out")
    assert set(paths) == {"markdown", "json", "heatmap"}
    assert paths["markdown"].name == "report.md"
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    assert json.loads(paths["json"].read_text()) == result
    md = paths["markdown"].read_text()
    for line in result["verdicts"].values():
        assert line in md
    assert "How to read this" in md
    assert "| cot | +0.0375 | +0.0850 |" in md
    assert paths["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_single_eval_task_has_no_cross_task() -> None:
    table = hand_table().drop(columns=["influence:B"])
    result = run_study(table, n_boot=50)
    assert result["cross_task"]["cot"]["mean_diff"] is None
    assert result["cross_task"]["cot"]["verdict"] == "indistinguishable"
    assert result["in_task"]["cot"]["n_probes"] == 2  # only g1, g2 are on an eval task
    json.dumps(result, allow_nan=False)


def test_import_is_light() -> None:
    code = "import sys, curator.influence.study; print(sorted(m for m in ('click', 'argilla', 'curator.cli', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
