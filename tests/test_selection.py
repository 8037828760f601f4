"""Tests for curator.alignment.selection: picking a generation strategy from alignment scores, no training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curator.errors import InputError
from curator.alignment.selection import NEEDS_TWO, select_strategy, write_selection_report

STRATEGIES = ("direct", "cot", "clarify", "self-eval")


def planted(n_groups: int = 30, ppl_best: str = "cot", seed: int = 3) -> pd.DataFrame:
    """4 strategies × n_groups; alignment clearly highest for cot; perplexity lowest for ``ppl_best``.

    Each group has its own difficulty offset shared by its candidates, as real prompts do.
    """
    rng = np.random.default_rng(seed)
    align_shift = {"direct": 0.0, "cot": 1.0, "clarify": 0.2, "self-eval": 0.1}
    rows = []
    for g in range(n_groups):
        difficulty = rng.normal(0.0, 0.3)
        for s in STRATEGIES:
            rows.append({
                "id": f"{s}-{g}",
                "strategy": s,
                "task": "math" if g % 2 else None,
                "group": f"g{g}",
                "alignment": align_shift[s] + difficulty + rng.normal(0.0, 0.2),
                "rouge-l": 0.3 + 0.1 * align_shift[s] + rng.normal(0.0, 0.02),
                "perplexity": (3.0 if s == ppl_best else 6.0 + STRATEGIES.index(s)) + rng.normal(0.0, 0.2),
            })
    return pd.DataFrame(rows)


def test_recovers_planted_best_strategy_and_respects_perplexity_direction() -> None:
    result = select_strategy(planted(), n_boot=500)
    assert result["strategies"] == sorted(STRATEGIES)
    assert result["metrics"] == ["alignment", "rouge-l", "perplexity"]
    assert result["recommended"] == "cot"
    assert result["primary"] == "alignment"
    rec = result["recommendation"]
    assert rec["metric"] == "alignment" and rec["runner_up"] == "clarify"
    assert rec["confidence"] == "clear"
    assert result["rankings"]["alignment"] == ["cot", "clarify", "self-eval", "direct"]
    # lower is better: cot (≈3) first, then 6 + index order: direct, clarify, self-eval
    assert result["rankings"]["perplexity"] == ["cot", "direct", "clarify", "self-eval"]
    assert result["directions"] == {"alignment": "higher", "rouge-l": "higher", "perplexity": "lower"}
    assert result["disagreements"] == []
    cot = result["stats"]["cot"]["alignment"]
    assert cot["n"] == 30 and cot["n_groups"] == 30
    assert cot["low"] < cot["mean"] < cot["high"]
    assert result["notes"] == []


def test_rankings_respect_direction_on_hand_table() -> None:
    table = pd.DataFrame({
        "id": ["a1", "a2", "b1", "b2"],
        "strategy": ["a", "a", "b", "b"],
        "group": ["g1", "g2", "g1", "g2"],
        "embedding": [0.2, 0.4, 0.5, 0.7],  # b higher → better
        "sappl": [2.0, 4.0, 5.0, 5.0],  # a lower → better
    })
    result = select_strategy(table, n_boot=100)
    assert result["rankings"] == {"embedding": ["b", "a"], "sappl": ["a", "b"]}
    assert result["stats"]["a"]["embedding"]["mean"] == pytest.approx(0.3)
    assert result["stats"]["b"]["sappl"]["mean"] == pytest.approx(5.0)
    # no 'alignment' column: the first alignment metric present decides
    assert result["primary"] == "embedding" and result["recommended"] == "b"
    assert "embedding" in result["primary_reason"]
    assert result["disagreements"] == ["sappl ranks a first, embedding ranks b first"]
    assert result["spearman"] == {"sappl": pytest.approx(-1.0)}


def test_only_perplexity_present_lowest_wins() -> None:
    table = planted(ppl_best="self-eval")[["id", "strategy", "group", "perplexity"]]
    result = select_strategy(table, n_boot=200)
    assert result["primary"] == "perplexity"
    assert result["recommended"] == "self-eval"


def test_explicit_primary() -> None:
    table = planted(ppl_best="direct")
    result = select_strategy(table, n_boot=200, primary="perplexity")
    assert result["recommended"] == "direct" and result["primary"] == "perplexity"
    assert "alignment ranks cot first, perplexity ranks direct first" in result["disagreements"]
    with pytest.raises(InputError, match="'sappl' has no values"):
        select_strategy(table, primary="sappl")
    with pytest.raises(InputError, match="unknown"):
        select_strategy(table, primary="bleu")


def test_bootstrap_is_seeded() -> None:
    table = planted(n_groups=12)
    a = select_strategy(table, n_boot=300, seed=5)
    b = select_strategy(table, n_boot=300, seed=5)
    c = select_strategy(table, n_boot=300, seed=6)
    assert a == b
    assert a["stats"]["cot"]["alignment"]["low"] != c["stats"]["cot"]["alignment"]["low"]
    # an interval does not depend on which other strategies are in the table
    only = select_strategy(table[table["strategy"].isin(["cot", "direct"])], n_boot=300, seed=5)
    assert only["stats"]["cot"]["alignment"] == a["stats"]["cot"]["alignment"]


def test_bootstrap_resamples_groups_not_candidates() -> None:
    table = planted(n_groups=10)
    doubled = pd.concat([table, table.assign(id=table["id"] + "-bis")], ignore_index=True)
    one = select_strategy(table, n_boot=400)["stats"]["cot"]["alignment"]
    two = select_strategy(doubled, n_boot=400)["stats"]["cot"]["alignment"]
    assert two["n"] == 2 * one["n"] and two["n_groups"] == one["n_groups"] == 10
    # duplicating every candidate inside its group adds no information: same interval
    assert (two["low"], two["high"]) == pytest.approx((one["low"], one["high"]))


def test_disagreement_note_only_when_planted() -> None:
    agree = select_strategy(planted(ppl_best="cot"), n_boot=200)
    assert agree["disagreements"] == []
    disagree = select_strategy(planted(ppl_best="direct"), n_boot=200)
    assert disagree["recommended"] == "cot"
    assert disagree["disagreements"] == ["perplexity ranks direct first, alignment ranks cot first"]
    assert disagree["spearman"]["rouge-l"] == pytest.approx(1.0)
    assert disagree["spearman"]["perplexity"] < 1.0


def test_tentative_when_intervals_overlap() -> None:
    table = planted()
    table.loc[table["strategy"] == "clarify", "alignment"] = table.loc[table["strategy"] == "cot", "alignment"].to_numpy() - 0.01
    rec = select_strategy(table, n_boot=300)["recommendation"]
    assert rec["strategy"] == "cot" and rec["runner_up"] == "clarify"
    assert rec["confidence"] == "tentative" and "overlap" in rec["note"]


def test_single_strategy_gives_means_but_no_recommendation() -> None:
    table = pd.DataFrame({
        "id": ["x1", "x2", "x3"],
        "strategy": ["cot"] * 3,
        "group": ["g1", "g1", "g2"],  # g2 has one candidate: it still counts
        "alignment": [0.2, 0.4, 0.9],
    })
    result = select_strategy(table, n_boot=100)
    assert result["recommended"] is None and result["recommendation"] is None
    assert NEEDS_TWO in result["notes"]
    assert result["stats"]["cot"]["alignment"]["mean"] == pytest.approx(0.5)
    assert result["stats"]["cot"]["alignment"]["n"] == 3
    assert result["disagreements"] == []


def test_nan_values_excluded_from_means() -> None:
    table = pd.DataFrame({
        "id": ["a1", "a2", "a3", "b1", "b2", "b3"],
        "strategy": ["a", "a", "a", "b", "b", "b"],
        "group": ["g1", "g2", "g3"] * 2,
        "alignment": [0.1, np.nan, 0.4, np.nan, np.nan, np.nan],
        "perplexity": [2.0, 3.0, np.nan, 5.0, np.nan, 8.0],
    })
    result = select_strategy(table, n_boot=100)
    assert result["stats"]["a"]["alignment"]["mean"] == pytest.approx(0.25)
    assert result["stats"]["a"]["alignment"]["n"] == 2
    assert result["stats"]["b"]["alignment"] == {"mean": None, "n": 0, "n_groups": 0, "low": None, "high": None}
    assert result["stats"]["b"]["perplexity"]["mean"] == pytest.approx(6.5)
    assert result["rankings"]["alignment"] == ["a"]
    assert result["recommendation"]["confidence"] == "tentative"
    json.dumps(result, allow_nan=False)


def test_input_errors() -> None:
    good = planted(n_groups=3)
    with pytest.raises(InputError, match="empty"):
        select_strategy(good.iloc[0:0])
    with pytest.raises(InputError, match="'strategy' column"):
        select_strategy(good.drop(columns=["strategy"]))
    with pytest.raises(InputError, match="no metric column") as info:
        select_strategy(good[["id", "strategy", "group"]])
    for name in ("alignment", "embedding", "rouge-l", "perplexity", "sappl"):
        assert name in str(info.value)
    bad = good.astype({"alignment": object})
    bad.loc[2, "alignment"] = "high"
    with pytest.raises(InputError, match="row 2: column 'alignment'"):
        select_strategy(bad)
    with pytest.raises(InputError, match="n_boot"):
        select_strategy(good, n_boot=0)
    with pytest.raises(InputError, match="confidence"):
        select_strategy(good, confidence=1.5)


def test_report_files(tmp_path: Path) -> None:
    result = select_strategy(planted(ppl_best="direct"), n_boot=200)
    paths = write_selection_report(result, tmp_path / "sel")
    assert set(paths) == {"markdown", "json", "plot"}
    assert json.loads(paths["json"].read_text()) == result
    md = paths["markdown"].read_text()
    assert "How to read this" in md and "**cot** (clear)" in md
    assert "perplexity ranks direct first, alignment ranks cot first" in md
    assert "| cot |" in md and "perplexity ↓" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a single-strategy result still writes a report
    single = select_strategy(planted()[lambda t: t["strategy"] == "cot"], n_boot=50)
    md1 = write_selection_report(single, tmp_path / "one")["markdown"].read_text()
    assert NEEDS_TWO in md1
    with pytest.raises(InputError, match="missing key"):
        write_selection_report({"strategies": []}, tmp_path / "bad")
