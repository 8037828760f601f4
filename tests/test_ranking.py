"""Tests for curator.curation.ranking: one explained ranking of each prompt's candidates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curator.errors import InputError
from curator.curation.ranking import OUTPUT_COLUMNS, RankingWeights, explain, rank_candidates
from curator.io.stats import zscore


def scores() -> pd.DataFrame:
    """g1: a, b, c; g2: d, e; g3: f alone."""
    return pd.DataFrame({
        "id": ["a", "b", "c", "d", "e", "f"],
        "strategy": ["cot", "direct", "clarify", "cot", "direct", "cot"],
        "task": ["physics", "physics", "physics", "math", "math", None],
        "group": ["g1", "g1", "g1", "g2", "g2", "g3"],
        "alignment": [0.9, 0.5, 0.1, 0.3, 0.7, 0.5],
        "perplexity": [3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
    })


def influence() -> pd.DataFrame:
    """Per-task influence; influence_max picks physics for a, c, d, f and math for b, e. Rows shuffled."""
    phys = {"a": 0.01, "b": 0.0, "c": 0.03, "d": 0.2, "e": -0.3, "f": 0.0}
    math_ = {"a": -0.02, "b": 0.05, "c": 0.02, "d": 0.1, "e": -0.1, "f": -0.05}
    ids = ["f", "e", "d", "c", "b", "a", "extra"]
    phys["extra"], math_["extra"] = 0.9, 0.9
    return pd.DataFrame({
        "id": ids,
        "influence:physics": [phys[i] for i in ids],
        "influence:math": [math_[i] for i in ids],
        "influence_max": [max(phys[i], math_[i]) for i in ids],
        "influence_mean": [(phys[i] + math_[i]) / 2 for i in ids],
    })


def order(df: pd.DataFrame) -> dict[str, list[str]]:
    return {g: list(part.sort_values("rank")["id"]) for g, part in df.groupby("group")}


def test_alignment_only_ranks_and_columns() -> None:
    out = rank_candidates(scores())
    assert list(out.columns) == OUTPUT_COLUMNS
    assert order(out) == {"g1": ["a", "b", "c"], "g2": ["e", "d"], "g3": ["f"]}
    assert list(out["id"]) == ["a", "b", "c", "e", "d", "f"]  # groups in input order, then by rank
    assert list(out["rank"]) == [1, 2, 3, 1, 2, 1]
    # population z-score of alignment: mean 0.5, std sqrt(0.4 / 6)
    std = np.sqrt(0.4 / 6)
    assert out.set_index("id")["score"]["a"] == pytest.approx(0.4 / std)
    assert out["influence"].isna().all() and out["best_influence_task"].isna().all()
    assert out.set_index("id")["task"]["f"] is None


def test_with_influence_exact_ranks() -> None:
    out = rank_candidates(scores(), influence())
    # z(alignment) + z(influence_max) over the 6 scored candidates ('extra' is ignored):
    # a 1.306, b 0.206, c -1.568, d 1.117, e -0.705, f -0.356: d now beats e in g2
    assert order(out) == {"g1": ["a", "b", "c"], "g2": ["d", "e"], "g3": ["f"]}
    by = out.set_index("id")
    a = np.array([0.9, 0.5, 0.1, 0.3, 0.7, 0.5])
    i = np.array([0.01, 0.05, 0.03, 0.2, -0.1, 0.0])
    expected = (a - a.mean()) / a.std() + (i - i.mean()) / i.std()
    assert list(by.loc[list("abcdef"), "score"]) == pytest.approx(list(expected))
    assert list(by.loc[list("abcdef"), "influence"]) == pytest.approx(list(i))
    assert list(by.loc[list("abcdef"), "best_influence_task"]) == ["physics", "math", "physics", "physics", "math", "physics"]


def test_weights_change_the_order() -> None:
    only_influence = rank_candidates(scores(), influence(), RankingWeights(alignment=0.0, influence=1.0))
    # influence_max: a .01, b .05, c .03 | d .2, e -.1
    assert order(only_influence) == {"g1": ["b", "c", "a"], "g2": ["d", "e"], "g3": ["f"]}
    only_alignment = rank_candidates(scores(), influence(), RankingWeights(alignment=1.0, influence=0.0))
    assert order(only_alignment) == order(rank_candidates(scores()))
    # influence_mean: a -.005, b .025, c .025 (tie with b → id order), d .15, e -.2
    by_mean = rank_candidates(scores(), influence(), RankingWeights(0.0, 1.0, "influence_mean"))
    assert order(by_mean)["g1"] == ["b", "c", "a"]
    # a: 1.549 - 0.2436 w, c: -1.549 - 0.0187 w → c passes a once w > 13.8
    assert order(rank_candidates(scores(), influence(), RankingWeights(1.0, 10.0)))["g1"] == ["b", "a", "c"]
    assert order(rank_candidates(scores(), influence(), RankingWeights(1.0, 20.0)))["g1"] == ["b", "c", "a"]


def test_ties_broken_by_id() -> None:
    table = pd.DataFrame({
        "id": ["z1", "m2", "a3"],
        "strategy": ["x", "y", "z"],
        "group": ["g", "g", "g"],
        "alignment": [0.5, 0.5, 0.5],
    })
    out = rank_candidates(table)
    assert list(out["id"]) == ["a3", "m2", "z1"]
    assert list(out["rank"]) == [1, 2, 3]
    assert list(out["score"]) == [0.0, 0.0, 0.0]  # constant signal → z = 0, no division by zero
    # constant alignment, no comparison to make: neutral wording
    assert list(out["explanation"]) == [f"ranked {k} of 3: alignment 0.5" for k in (1, 2, 3)]
    shuffled = rank_candidates(table.iloc[::-1].reset_index(drop=True))
    assert list(shuffled["id"]) == ["a3", "m2", "z1"]


def test_constant_signal_leaves_the_other_to_decide() -> None:
    table = scores().assign(alignment=0.4)
    out = rank_candidates(table, influence())
    assert order(out) == {"g1": ["b", "c", "a"], "g2": ["d", "e"], "g3": ["f"]}
    assert np.isfinite(out["score"]).all()


def test_explanations_exact() -> None:
    out = rank_candidates(scores(), influence()).set_index("id")["explanation"]
    assert out["a"] == "ranked 1 of 3: closest to the model's own answers (alignment 0.9), lowest influence on physics (0.01)"
    assert out["b"] == "ranked 2 of 3: alignment 0.5, highest influence on math (0.05)"
    assert out["c"] == "ranked 3 of 3: furthest from the model's own answers (alignment 0.1), influence on physics 0.03"
    assert out["d"] == "ranked 1 of 2: furthest from the model's own answers (alignment 0.3), highest influence on physics (0.2)"
    assert out["e"] == "ranked 2 of 2: closest to the model's own answers (alignment 0.7), lowest influence on math (-0.1)"
    assert out["f"] == "ranked 1 of 1: alignment 0.5, influence on physics 0"
    plain = rank_candidates(scores()).set_index("id")["explanation"]
    assert plain["a"] == "ranked 1 of 3: closest to the model's own answers (alignment 0.9)"
    unused = rank_candidates(scores(), influence(), RankingWeights(1.0, 0.0)).set_index("id")["explanation"]
    assert unused["e"] == "ranked 1 of 2: closest to the model's own answers (alignment 0.7), influence on math -0.1 (not used)"
    per_task = rank_candidates(scores(), influence(), RankingWeights(0.0, 1.0, "influence:math")).set_index("id")["explanation"]
    assert per_task["b"] == "ranked 1 of 3: alignment 0.5 (not used), highest influence on math (0.05)"
    for text in out:
        assert "\n" not in text and not text.endswith(".")


def test_missing_alignment_value_is_neutral() -> None:
    table = scores()
    table.loc[0, "alignment"] = np.nan  # a
    out = rank_candidates(table)
    by = out.set_index("id")
    assert by.loc["a", "score"] == pytest.approx(0.0, abs=1e-12)
    assert by.loc["a", "explanation"] == "ranked 2 of 3: alignment n/a"
    assert order(out)["g1"] == ["b", "a", "c"]


def test_missing_influence_ids() -> None:
    infl = influence()
    infl = infl[~infl["id"].isin(["c", "e"])]
    with pytest.raises(InputError, match=r"2 of 6 candidate ids are missing from the influence table \(e\.g\. 'c', 'e'\)"):
        rank_candidates(scores(), infl)


def test_input_errors() -> None:
    with pytest.raises(InputError, match="no column 'influence_top'"):
        rank_candidates(scores(), influence(), RankingWeights(influence_column="influence_top"))
    with pytest.raises(InputError, match="nothing to rank by"):
        rank_candidates(scores().drop(columns=["alignment"]))
    with pytest.raises(InputError, match="nothing to rank by"):
        rank_candidates(scores(), None, RankingWeights(alignment=0.0, influence=1.0))
    with pytest.raises(InputError, match="missing column"):
        rank_candidates(scores().drop(columns=["group"]))
    with pytest.raises(InputError, match="empty"):
        rank_candidates(scores().iloc[0:0])
    dup = scores()
    dup.loc[1, "id"] = "a"
    with pytest.raises(InputError, match="'a' appears more than once"):
        rank_candidates(dup)
    with pytest.raises(InputError, match="both zero"):
        RankingWeights(alignment=0.0, influence=0.0)
    with pytest.raises(InputError, match="influence=-1"):
        RankingWeights(influence=-1.0)


def test_influence_only_scores_table() -> None:
    out = rank_candidates(scores().drop(columns=["alignment"]), influence())
    assert order(out)["g1"] == ["b", "c", "a"]
    assert out.set_index("id")["explanation"]["b"] == "ranked 1 of 3: highest influence on math (0.05)"


def test_zscore_and_explain_helpers() -> None:
    assert list(zscore(np.array([1.0, np.nan, 3.0]))) == [-1.0, 0.0, 1.0]
    assert list(zscore(np.array([2.0, 2.0]))) == [0.0, 0.0]
    assert list(zscore(np.array([np.nan, 5.0]))) == [0.0, 0.0]
    assert explain(1, 1, []) == "ranked 1 of 1"


def test_all_missing_alignment_is_not_a_signal() -> None:
    scores = pd.DataFrame({"id": ["a", "b"], "strategy": ["x", "y"], "task": ["t", "t"], "group": ["g", "g"], "alignment": [np.nan, np.nan]})
    with pytest.raises(InputError, match="nothing to rank by: signals present: none"):
        rank_candidates(scores)
    infl = pd.DataFrame({"id": ["a", "b"], "influence_max": [0.1, 0.9]})
    ranked = rank_candidates(scores, infl)
    assert list(ranked["id"]) == ["b", "a"]
    assert "alignment" not in ranked["explanation"].iloc[0]
