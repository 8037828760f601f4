"""Aggregation of annotators' rankings: Borda, mean rank, Kendall's W, statuses (hand-computed values)."""

from __future__ import annotations

import pytest

from curator.curation.annotations import aggregate, fractional_ranks, kendalls_w, rank_groups, summarize, tally_strategies
from curator.errors import InputError

SLOTS = {"candidate_1": "a", "candidate_2": "b", "candidate_3": "c", "candidate_4": "d"}


def rec(rankings: dict, status: str = "submitted", **kw) -> dict:
    return {"id": "r1", "slots": SLOTS, "rankings": rankings, "status": status, **kw}


def ranks(*pairs: tuple[str, int]) -> list[dict]:
    return [{"value": v, "rank": r} for v, r in pairs]


def test_borda_exact_points_and_order() -> None:
    # u1: c > a > b > d ; u2: a > c > d > b ; u3: c > b > a > d   (n = 4: points = 4 − rank)
    out = aggregate([rec({
        "u1": ["candidate_3", "candidate_1", "candidate_2", "candidate_4"],
        "u2": ["candidate_1", "candidate_3", "candidate_4", "candidate_2"],
        "u3": ["candidate_3", "candidate_2", "candidate_1", "candidate_4"],
    })])[0]
    # points: a = 2+3+1 = 6, b = 1+0+2 = 3, c = 3+2+3 = 8, d = 0+1+0 = 1
    assert out["ranking"] == ["c", "a", "b", "d"]
    scores = {s["candidate_id"]: s for s in out["ranking_scores"]}
    assert {k: v["borda"] for k, v in scores.items()} == {"a": 6.0, "b": 3.0, "c": 8.0, "d": 1.0}
    assert scores["a"]["mean_rank"] == pytest.approx(2.0)
    assert scores["c"]["mean_rank"] == pytest.approx(4 / 3)
    assert out["n_annotators"] == 3
    assert out["method"] == "borda"


def test_ties_get_fractional_ranks_and_half_points() -> None:
    # u1 ties b and c for second place (Argilla form: equal ranks)
    out = aggregate([rec({"u1": ranks(("candidate_1", 1), ("candidate_2", 2), ("candidate_3", 2), ("candidate_4", 3))})])[0]
    scores = {s["candidate_id"]: s for s in out["ranking_scores"]}
    assert scores["b"]["mean_rank"] == scores["c"]["mean_rank"] == 2.5
    assert scores["b"]["borda"] == scores["c"]["borda"] == 1.5
    assert scores["a"]["borda"] == 3.0 and scores["d"]["borda"] == 0.0
    assert out["ranking"] == ["a", "b", "c", "d"]  # tie broken by slot order
    assert out["annotator_rankings"]["u1"] == [
        {"candidate_id": "a", "slot": "candidate_1", "rank": 1},
        {"candidate_id": "b", "slot": "candidate_2", "rank": 2},
        {"candidate_id": "c", "slot": "candidate_3", "rank": 2},
        {"candidate_id": "d", "slot": "candidate_4", "rank": 3},
    ]


def test_mean_rank_differs_from_borda_on_partial_rankings() -> None:
    # u1 ranks only b (others tie last for u1); u2 ranks everything: a > c > d > b
    r = {"u1": ["candidate_2"], "u2": ["candidate_1", "candidate_3", "candidate_4", "candidate_2"]}
    borda = aggregate([rec(r)], method="borda")[0]
    mean = aggregate([rec(r)], method="mean_rank")[0]
    # borda: u1 gives b 3, a/c/d 4 − 3 = 1 each; u2 gives a 3, c 2, d 1, b 0 → a 4, b 3, c 3, d 2
    assert {s["candidate_id"]: s["borda"] for s in borda["ranking_scores"]} == {"a": 4.0, "b": 3.0, "c": 3.0, "d": 2.0}
    assert borda["ranking"] == ["a", "c", "b", "d"]  # b and c tie on points: c's mean rank (2) beats b's (2.5)
    # mean rank over annotators who ranked the item: b = (1 + 4) / 2 = 2.5, a = 1, c = 2, d = 3
    assert {s["candidate_id"]: s["mean_rank"] for s in mean["ranking_scores"]} == {"a": 1.0, "b": 2.5, "c": 2.0, "d": 3.0}
    assert mean["ranking"] == ["a", "c", "b", "d"]
    # where they differ: u1 ranks b first and nothing else; u2, u3 rank a > b > c > d
    r2 = {"u1": ["candidate_2"], "u2": ["candidate_1", "candidate_2", "candidate_3", "candidate_4"], "u3": ["candidate_1", "candidate_2", "candidate_3", "candidate_4"]}
    # borda: a = 1 + 3 + 3 = 7, b = 3 + 2 + 2 = 7, tie → mean rank a 1 < b 5/3; mean rank: a 1, b 5/3
    assert aggregate([rec(r2)], method="borda")[0]["ranking"][:2] == ["a", "b"]
    # u1 ranks only c; u2: a > b > c > d; u3: c > a > b > d
    r3 = {"u1": ["candidate_3"], "u2": ["candidate_1", "candidate_2", "candidate_3", "candidate_4"], "u3": ["candidate_3", "candidate_1", "candidate_2", "candidate_4"]}
    # borda: a = 1 + 3 + 2 = 6, c = 3 + 1 + 3 = 7 → c first; mean rank: a = (1 + 2) / 2 = 1.5, c = (1 + 3 + 1) / 3 = 5/3 → a first
    assert aggregate([rec(r3)], method="borda")[0]["ranking"][0] == "c"
    assert aggregate([rec(r3)], method="mean_rank")[0]["ranking"][0] == "a"
    assert mean["method"] == "mean_rank"


def test_kendalls_w_hand_computed() -> None:
    # m = 3, n = 4: rank sums 4, 6, 8, 12; mean 7.5; S = 35; W = 12·35 / (9·60) = 7/9
    r = {"u1": ["candidate_1", "candidate_2", "candidate_3", "candidate_4"],
         "u2": ["candidate_2", "candidate_1", "candidate_3", "candidate_4"],
         "u3": ["candidate_1", "candidate_3", "candidate_2", "candidate_4"]}
    assert aggregate([rec(r)])[0]["agreement"] == pytest.approx(7 / 9)


def test_kendalls_w_identical_reversed_and_single() -> None:
    order = ["candidate_1", "candidate_2", "candidate_3", "candidate_4"]
    assert aggregate([rec({"u1": order, "u2": order, "u3": order})])[0]["agreement"] == pytest.approx(1.0)
    assert aggregate([rec({"u1": order, "u2": order[::-1]})])[0]["agreement"] == pytest.approx(0.0)
    assert aggregate([rec({"u1": order})])[0]["agreement"] is None


def test_kendalls_w_tie_correction() -> None:
    slots = ["a", "b", "c", "d"]
    # u1: 1,2,3,4 ; u2: a,b tied first (1.5, 1.5), 3, 4. Rank sums 2.5, 3.5, 6, 8; mean 5
    # S = 6.25 + 2.25 + 1 + 9 = 18.5; T(u2) = 2³ − 2 = 6; W = 12·18.5 / (4·60 − 2·6) = 222 / 228
    w = kendalls_w([[["a"], ["b"], ["c"], ["d"]], [["a", "b"], ["c"], ["d"]]], slots)
    assert w == pytest.approx(222 / 228)
    assert w > 0.97 and w < 1.0
    assert kendalls_w([[["a", "b", "c", "d"]], [["a", "b", "c", "d"]]], slots) is None  # all tied: undefined


def test_fractional_ranks_and_rank_groups() -> None:
    assert fractional_ranks([["a"], ["b", "c"]], ["a", "b", "c", "d"]) == {"a": 1.0, "b": 2.5, "c": 2.5, "d": 4.0}
    groups = rank_groups({"candidate_2": 1, "candidate_5": 2, "candidate_1": 1}, ["candidate_1", "candidate_2"])
    assert groups == [["candidate_1", "candidate_2"]]  # unknown placeholder slot dropped, tie kept
    with pytest.raises(InputError, match="ranked twice"):
        rank_groups(["candidate_1", "candidate_1"], ["candidate_1"])
    with pytest.raises(InputError, match="rank"):
        rank_groups([{"value": "candidate_1", "rank": "first"}], ["candidate_1"])


def test_discarded_and_pending_are_kept_and_counted() -> None:
    order = ["candidate_1", "candidate_2", "candidate_3", "candidate_4"]
    records = [
        rec({"u1": order}, best_strategy={"u1": "cot"}),
        {**rec({}, status="discarded"), "id": "r2"},
        {**rec({}, status="pending"), "id": "r3"},
        {**rec({"u1": order, "u2": order}, best_strategy={"u1": "cot", "u2": "direct"}), "id": "r4"},
    ]
    out = aggregate(records)
    assert [r["id"] for r in out] == ["r1", "r2", "r3", "r4"]
    assert out[1]["ranking"] == [] and out[1]["agreement"] is None and out[1]["status"] == "discarded"
    assert out[2]["ranking"] == [] and out[2]["n_annotators"] == 0
    assert summarize(out) == {"records": 4, "submitted": 2, "discarded": 1, "pending": 1}
    assert out[3]["best_strategy_votes"] == {"cot": 1, "direct": 1}
    assert tally_strategies(out) == {"cot": 2, "direct": 1}


def test_bad_input_is_refused() -> None:
    with pytest.raises(InputError, match="method"):
        aggregate([rec({})], method="copeland")
    with pytest.raises(InputError, match="slots"):
        aggregate([{"id": "x", "rankings": {}}])
    with pytest.raises(InputError, match="status"):
        aggregate([rec({}, status="draft")])
