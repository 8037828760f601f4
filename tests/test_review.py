"""The agreement and anchoring report over a pulled file, and leaving out annotators who disagree
with the consensus (``curator export --min-annotator-agreement``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curator.curation import review
from curator.curation.export import export
from tests.test_export import cand, row, write


def ranking(*ids: str) -> list[dict]:
    return [{"candidate_id": c, "slot": f"candidate_{k + 1}", "rank": k + 1} for k, c in enumerate(ids)]


def ann(user: str, *ids: str) -> dict:
    return {"user_id": user, "username": user, "ranking": ranking(*ids), "best_strategy": None, "comment": None, "ratings": [], "labels": []}


def three_annotators() -> list[dict]:
    """ann and bob agree; eve reverses them on every record; the suggestion is ann's order."""
    out = []
    for k in range(3):
        cs = [cand(f"{k}a", "direct", "a", 1), cand(f"{k}b", "cot", "b", 2), cand(f"{k}c", "clarify", "c", 3)]
        anns = [ann("ann", f"{k}b", f"{k}a", f"{k}c"), ann("bob", f"{k}b", f"{k}a", f"{k}c"), ann("eve", f"{k}c", f"{k}a", f"{k}b")]
        out.append(row(f"r{k}", f"Question {k}?", cs, "submitted", [f"{k}b", f"{k}a", f"{k}c"], {f"{k}b": 4.0, f"{k}a": 3.0, f"{k}c": 2.0}, n=3, agreement=0.111,
                       suggested=[f"{k}b", f"{k}a", f"{k}c"], annotations=anns))
    return out


def test_summary_reports_consensus_taus_alpha_and_anchoring() -> None:
    s = review.summary(three_annotators())
    assert s["records"] == 3 and s["kendalls_w"] == {"n": 3, "mean": pytest.approx(0.111), "min": 0.111}
    assert s["annotators"] == {"ann": {"records": 3, "tau_with_consensus": 1.0}, "bob": {"records": 3, "tau_with_consensus": 1.0}, "eve": {"records": 3, "tau_with_consensus": -1.0}}
    # the units: each record's candidates, valued by each annotator's rank (see the test below)
    assert s["alpha"]["rankings"] == pytest.approx(RANK_ALPHA) and s["alpha"]["ratings"] is None and s["alpha"]["labels"] is None
    anc = s["anchoring"]
    assert anc["annotators"]["ann"] == {"n": 3, "unchanged": 3, "unchanged_rate": 1.0, "tau_with_suggestion": 1.0}
    assert anc["annotators"]["eve"]["unchanged"] == 0 and anc["overall"]["unchanged_rate"] == pytest.approx(6 / 9)
    assert anc["overall"]["tau_between_annotators"] == pytest.approx((1 - 1 - 1) / 3)
    assert "suggests anchoring" in anc["overall"]["verdict"]
    text = review.render(s, "pulled.jsonl")
    assert "| eve | 3 | -1.000 |" in text and f"Krippendorff's alpha, rankings (ordinal): {RANK_ALPHA:.3f}" in text


# each record: candidate b is ranked (1, 1, 3) by (ann, bob, eve), a (2, 2, 2), c (3, 3, 1)
RANK_UNITS = [{"ann": 1.0, "bob": 1.0, "eve": 3.0}, {"ann": 2.0, "bob": 2.0, "eve": 2.0}, {"ann": 3.0, "bob": 3.0, "eve": 1.0}] * 3
# Ordinal alpha by hand. The values 1, 2, 3 occur 9 times each (n = 27), so delta²(1,2) = delta²(2,3) = (9/2 + 9/2)² = 81
# and delta²(1,3) = (9 + 9 + 9 - (9 + 9)/2)² = 324. Each b and c unit has 4 ordered (1,3)/(3,1) pairs of weight 1/(m - 1) = 1/2:
# o(1,3) = o(3,1) = 6 over the 6 such units. D_O = sum o·delta², D_E = sum over c != k of n_c·n_k·delta², alpha = 1 - (n - 1)·D_O / D_E.
D_O = 2 * 6 * 324
D_E = 2 * (9 * 9 * 324 + 9 * 9 * 81 + 9 * 9 * 81)
RANK_ALPHA = 1 - (27 - 1) * D_O / D_E


def test_alpha_of_the_rankings_by_hand() -> None:
    from curator.curation.agreement import krippendorff_alpha

    assert krippendorff_alpha(RANK_UNITS, "ordinal") == pytest.approx(RANK_ALPHA)


def test_min_annotator_agreement_leaves_out_the_dissenter_and_reaggregates(tmp_path: Path) -> None:
    pulled = write(tmp_path / "p.jsonl", three_annotators())
    res = export(pulled, "dpo", tmp_path / "dpo.jsonl", dpo_pairs="all-pairs", min_annotator_agreement=0.0)
    assert res.left_out == ["eve"]
    rows = [json.loads(x) for x in res.out.read_text().splitlines()]
    assert {(r["chosen_id"][1:], r["rejected_id"][1:]) for r in rows} == {("b", "a"), ("b", "c"), ("a", "c")}
    assert {r["n_annotators"] for r in rows} == {2} and {r["agreement"] for r in rows} == {1.0}
    card = (tmp_path / "dpo.README.md").read_text()
    assert "annotators left out below min annotator agreement (0.0): eve" in card
    kept_all = export(pulled, "dpo", tmp_path / "all.jsonl", dpo_pairs="all-pairs")
    assert kept_all.left_out == [] and {json.loads(x)["n_annotators"] for x in kept_all.out.read_text().splitlines()} == {3}
