"""Agreement and anchoring measures: published Krippendorff values, hand-worked taus, the anchoring rule."""

from __future__ import annotations

import math
import random
from itertools import combinations

import pytest

from curator.curation.agreement import (
    ANCHOR_TAU_GAP,
    ANCHOR_UNCHANGED_RATE,
    anchoring,
    consensus_taus,
    kendall_tau,
    krippendorff_alpha,
    majority_label,
    rating_summary,
)
from curator.errors import InputError

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers × 12
# units, values 1-5, None = missing ('*'). Published: nominal 0.743, ordinal 0.815, interval 0.849.
K2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
# Wikipedia, "Krippendorff's alpha", computational example: 3 coders × 15 units.
# Published: nominal 0.691, interval 0.811.
WIKI = [
    [None, None, None, None, None, 3, 4, 1, 2, 1, 1, 3, 3, None, 3],
    [1, None, 2, 1, 3, 3, 4, 3, None, None, None, None, None, None, None],
    [None, None, 2, 1, 3, 4, 4, None, 2, 1, 1, 3, 3, None, 4],
]


def to_units(matrix: list[list]) -> list[dict]:
    """Coder-by-unit matrix → one dict per unit (coder id → value), missing values left out."""
    return [{f"coder{c}": row[j] for c, row in enumerate(matrix) if row[j] is not None} for j in range(len(matrix[0]))]


@pytest.mark.parametrize("level, expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_alpha_krippendorff_2011_example(level: str, expected: float) -> None:
    assert round(krippendorff_alpha(to_units(K2011), level), 3) == expected


@pytest.mark.parametrize("level, expected", [("nominal", 0.691), ("interval", 0.811)])
def test_alpha_wikipedia_example(level: str, expected: float) -> None:
    assert round(krippendorff_alpha(to_units(WIKI), level), 3) == expected


def test_alpha_hand_computed_nominal() -> None:
    # units (a,a), (a,b), (b,b): o_aa = o_bb = 2, o_ab = o_ba = 1, n_a = n_b = 3, n = 6
    # α = 1 − (n−1)·(o_ab + o_ba) / (2·n_a·n_b) = 1 − 5·2/18 = 4/9
    units = [{"u1": "a", "u2": "a"}, {"u1": "a", "u2": "b"}, {"u1": "b", "u2": "b"}]
    assert krippendorff_alpha(units, "nominal") == pytest.approx(4 / 9)
    # a single disagreeing unit: chance level exactly
    assert krippendorff_alpha([{"u1": "a", "u2": "b"}], "nominal") == pytest.approx(0.0)


def test_alpha_undefined_and_missing() -> None:
    assert krippendorff_alpha([{"u1": 3, "u2": 3}, {"u1": 3, "u2": 3, "u3": 3}], "interval") is None  # D_e = 0
    assert krippendorff_alpha([{"u1": 1}, {"u2": 2}, {}], "ordinal") is None  # nothing pairable
    assert krippendorff_alpha([], "nominal") is None
    # one-value units, None and NaN are dropped as missing: same as without them
    base = [{"u1": 1, "u2": 2}, {"u1": 2, "u2": 2}, {"u1": 3, "u2": 3}]
    padded = base + [{"u1": 5}, {"u1": None, "u2": float("nan")}, {"u1": 4, "u2": None}]
    assert krippendorff_alpha(padded, "interval") == pytest.approx(krippendorff_alpha(base, "interval"))
    assert krippendorff_alpha([{"u1": 1, "u2": 1}, {"u1": 2, "u2": 2}], "ordinal") == pytest.approx(1.0)


def _alpha_pairwise(units: list[dict], level: str) -> float | None:
    """Reference: alpha from its pairwise definition (D_o over within-unit pairs, D_e over all pairs)."""
    kept = [list(u.values()) for u in units if len(u) >= 2]
    pool = [v for vals in kept for v in vals]
    n = len(pool)
    if n == 0:
        return None
    freq = {v: pool.count(v) for v in set(pool)}
    order = sorted(freq)

    def d2(c: float, k: float) -> float:
        if level == "nominal":
            return float(c != k)
        if level == "interval":
            return (c - k) ** 2
        lo, hi = min(c, k), max(c, k)
        return (sum(freq[g] for g in order if lo <= g <= hi) - (freq[c] + freq[k]) / 2) ** 2

    d_o = sum(d2(x, y) / (len(vals) - 1) for vals in kept for i, x in enumerate(vals) for j, y in enumerate(vals) if i != j) / n
    d_e = sum(d2(x, y) for i, x in enumerate(pool) for j, y in enumerate(pool) if i != j) / (n * (n - 1))
    return None if d_e == 0 else 1 - d_o / d_e


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_matches_pairwise_definition_on_random_data(level: str) -> None:
    rng = random.Random(7)
    for _ in range(40):
        coders, n_units = rng.randint(2, 5), rng.randint(2, 12)
        values = [1, 1.5, 2, 3, 4.5] if level != "nominal" else [1, 2, 3]
        units = [{f"c{c}": rng.choice(values) for c in range(coders) if rng.random() > 0.3} for _ in range(n_units)]
        ref = _alpha_pairwise(units, level)
        got = krippendorff_alpha(units, level)
        assert (got is None) == (ref is None)
        if ref is not None:
            assert got == pytest.approx(ref, abs=1e-12)


def test_alpha_bad_input() -> None:
    with pytest.raises(InputError, match="use one of nominal, ordinal, interval"):
        krippendorff_alpha([{"u1": 1, "u2": 2}], "ratio")
    with pytest.raises(InputError, match="not a finite number"):
        krippendorff_alpha([{"u1": "keep", "u2": "drop"}], "interval")
    with pytest.raises(InputError, match="unit 2"):
        krippendorff_alpha([{"u1": 1, "u2": 1}, ["not", "a", "dict"]], "nominal")
    assert krippendorff_alpha([{"u1": "keep", "u2": "drop"}, {"u1": "keep", "u2": "keep"}], "nominal") is not None


def test_kendall_tau_hand_worked() -> None:
    a = {"w": 1, "x": 2, "y": 3, "z": 4}
    assert kendall_tau(a, a) == pytest.approx(1.0)
    assert kendall_tau(a, {"w": 4, "x": 3, "y": 2, "z": 1}) == pytest.approx(-1.0)
    # one swapped pair of 6: (5 − 1)/6
    assert kendall_tau(a, {"w": 1, "x": 3, "y": 2, "z": 4}) == pytest.approx(2 / 3)
    # ties: C = 4, D = 0, 6 pairs, 1 tied in each → 4/√(5·5) = 0.8
    assert kendall_tau({"w": 1, "x": 2.5, "y": 2.5, "z": 4}, {"w": 1.5, "x": 1.5, "y": 3, "z": 4}) == pytest.approx(0.8)
    # only common items count: 'v' and 'q' are ignored
    assert kendall_tau({**a, "v": 9}, {"w": 1, "x": 3, "y": 2, "z": 4, "q": 0}) == pytest.approx(2 / 3)


def test_kendall_tau_undefined_and_bad() -> None:
    assert kendall_tau({"a": 1}, {"a": 1, "b": 2}) is None  # one common item
    assert kendall_tau({"a": 1, "b": 2}, {"c": 1, "d": 2}) is None
    assert kendall_tau({"a": 1.5, "b": 1.5}, {"a": 1, "b": 2}) is None  # all ties
    with pytest.raises(InputError, match="ranks must be finite numbers"):
        kendall_tau({"a": "first", "b": 2}, {"a": 1, "b": 2})


def _tau_b_loops(a: dict, b: dict) -> float | None:
    """Reference: tau-b counted pair by pair."""
    keys = [k for k in a if k in b]
    c = d = ta = tb = 0
    for i, j in combinations(keys, 2):
        da, db = a[i] - a[j], b[i] - b[j]
        ta += da == 0
        tb += db == 0
        if da * db > 0:
            c += 1
        elif da * db < 0:
            d += 1
    p = len(keys) * (len(keys) - 1) // 2
    denom = math.sqrt((p - ta) * (p - tb))
    return None if denom == 0 else (c - d) / denom


def test_kendall_tau_random_tied_data() -> None:
    rng = random.Random(11)
    scipy_stats = None
    try:
        from scipy import stats as scipy_stats  # type: ignore[no-redef]
    except ImportError:
        pass
    for _ in range(200):
        n = rng.randint(2, 9)
        a = {str(i): float(rng.randint(1, 4)) for i in range(n)}
        b = {str(i): float(rng.randint(1, 4)) for i in range(n)}
        got, ref = kendall_tau(a, b), _tau_b_loops(a, b)
        assert (got is None) == (ref is None)
        if ref is not None:
            assert got == pytest.approx(ref, abs=1e-12)
            if scipy_stats is not None:
                assert got == pytest.approx(scipy_stats.kendalltau(list(a.values()), list(b.values()))[0], abs=1e-12)


def test_consensus_taus() -> None:
    consensus = {"a": 1, "b": 2, "c": 3}
    out = consensus_taus({"u1": {"a": 1, "b": 2, "c": 3}, "u2": {"a": 3, "b": 2, "c": 1}, "u3": {"a": 2, "b": 2, "c": 2}}, consensus)
    assert out == {"u1": pytest.approx(1.0), "u2": pytest.approx(-1.0), "u3": None}
    assert consensus_taus({}, consensus) == {}


S3 = {"s1": 1, "s2": 2, "s3": 3}


def sub(record: str, user: str, ranking: dict, suggested: dict | None = S3) -> dict:
    return {"record_id": record, "user": user, "ranking": ranking, "suggested": suggested}


def test_anchoring_hand_worked_flags_high_unchanged_rate() -> None:
    swapped = {"s1": 2, "s2": 1, "s3": 3}  # tau with S3 = (2 − 1)/3
    out = anchoring([
        sub("r1", "u1", S3), sub("r1", "u2", swapped),
        sub("r2", "u1", S3), sub("r2", "u2", S3),
        sub("r3", "u1", {"s1": 3, "s2": 2, "s3": 1}, None),  # no suggestion: not counted, one annotator
    ])
    assert out["annotators"]["u1"] == {"n": 2, "unchanged": 2, "unchanged_rate": 1.0, "tau_with_suggestion": pytest.approx(1.0)}
    assert out["annotators"]["u2"] == {"n": 2, "unchanged": 1, "unchanged_rate": 0.5, "tau_with_suggestion": pytest.approx(2 / 3)}
    o = out["overall"]
    assert (o["n"], o["unchanged_rate"], o["pairs"]) == (4, 0.75, 2)
    assert o["tau_with_suggestion"] == pytest.approx(5 / 6)  # (1 + 1 + 1/3 + 1)/4
    assert o["tau_between_annotators"] == pytest.approx(2 / 3)  # r1: 1/3, r2: 1
    assert o["tau_with_suggestion"] - o["tau_between_annotators"] < ANCHOR_TAU_GAP  # flagged by the rate alone
    assert o["unchanged_rate"] > ANCHOR_UNCHANGED_RATE
    assert o["verdict"] == (
        "Agreement with the suggestion (tau 0.83) exceeds agreement between annotators (tau 0.67) by 0.17 "
        "and 75% of submissions kept the suggestion unchanged: this suggests anchoring."
    )


def test_anchoring_flags_tau_gap_and_clears_independent_annotators() -> None:
    s4 = {"a": 1, "b": 2, "c": 3, "d": 4}
    u1, u2 = {"a": 2, "b": 1, "c": 3, "d": 4}, {"a": 1, "b": 2, "c": 4, "d": 3}
    # each is 2/3 from the suggestion but only 1/3 from the other: gap 1/3 > 0.2, nothing unchanged
    o = anchoring([sub("r", "u1", u1, s4), sub("r", "u2", u2, s4)])["overall"]
    assert (o["unchanged_rate"], o["tau_with_suggestion"], o["tau_between_annotators"]) == (0.0, pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert o["verdict"].endswith("by 0.33 and 0% of submissions kept the suggestion unchanged: this suggests anchoring.")
    # both move away from the suggestion the same way: they agree with each other more than with it
    o = anchoring([sub("r", "u1", u1, s4), sub("r", "u2", dict(u1), s4)])["overall"]
    assert o["tau_between_annotators"] == pytest.approx(1.0)
    assert "is below agreement between annotators (tau 1.00) by 0.33" in o["verdict"]
    assert o["verdict"].endswith("no sign of anchoring.")


def test_anchoring_unchanged_means_same_tie_groups() -> None:
    tied = {"s1": 1, "s2": 2.5, "s3": 2.5}
    out = anchoring([
        sub("r1", "u1", tied, {"s1": 1, "s2": 2, "s3": 2}),  # same groups, other numbers: unchanged
        sub("r2", "u1", S3, tied),  # a tie broken: changed
        sub("r3", "u1", {"s1": 1, "s2": 2}, S3),  # a slot missing: changed
    ])["annotators"]["u1"]
    assert (out["n"], out["unchanged"]) == (3, 1)


def test_anchoring_one_annotator_and_no_suggestion() -> None:
    out = anchoring([sub("r1", "u1", S3), sub("r2", "u1", {"s1": 2, "s2": 1, "s3": 3})])
    o = out["overall"]
    assert (o["pairs"], o["tau_between_annotators"], o["unchanged_rate"]) == (0, None, 0.5)
    assert o["verdict"] == ("50% of submissions kept the suggestion unchanged (no two annotators ranked the same record, "
                            "so only the unchanged rate is judged): no sign of anchoring.")
    out = anchoring([sub("r1", "u1", S3, None), sub("r1", "u2", S3, {})])
    assert out["annotators"]["u1"] == {"n": 0, "unchanged": 0, "unchanged_rate": None, "tau_with_suggestion": None}
    o = out["overall"]
    assert (o["n"], o["unchanged_rate"], o["tau_with_suggestion"], o["tau_between_annotators"]) == (0, None, None, pytest.approx(1.0))
    assert o["verdict"] == "No submission had a suggestion, so anchoring cannot be assessed."
    assert anchoring([])["overall"]["verdict"] == "No submission had a suggestion, so anchoring cannot be assessed."


def test_anchoring_bad_input() -> None:
    with pytest.raises(InputError, match="submitted record 'r1' twice"):
        anchoring([sub("r1", "u1", S3), sub("r1", "u1", S3)])
    with pytest.raises(InputError, match="missing 'ranking'"):
        anchoring([{"record_id": "r1", "user": "u1"}])
    with pytest.raises(InputError, match="submission 1 suggested"):
        anchoring([sub("r1", "u1", S3, ["s1", "s2"])])


def test_majority_label() -> None:
    assert majority_label(["keep", "keep", "drop"]) == ("keep", pytest.approx(2 / 3))
    assert majority_label(["keep", "drop"]) == (None, 0.5)
    assert majority_label(["keep", "keep", "drop", "drop", "skip"]) == (None, 0.4)
    assert majority_label(["drop"]) == ("drop", 1.0)
    assert majority_label([]) == (None, 0.0)


def test_rating_summary() -> None:
    assert rating_summary([1, 2, 2, 5]) == {"n": 4, "mean": 2.5, "median": 2.0}
    assert rating_summary([4, 1, 5]) == {"n": 3, "mean": pytest.approx(10 / 3), "median": 4.0}
    assert rating_summary([]) == {"n": 0, "mean": None, "median": None}
    with pytest.raises(InputError, match="not a finite number"):
        rating_summary([3, "five"])
    with pytest.raises(InputError, match="not a finite number"):
        rating_summary([True, 3])
