"""`curator export`: SFT rows and DPO pairs from a hand-made pulled file, filters, formats, card."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curator.errors import InputError
from curator.curation.export import card_path, export

PULLED_AT = "2026-11-21T06:00:00+00:00"


def cand(cid: str, strategy: str, text: str, slot: int) -> dict:
    return {"slot": f"candidate_{slot}", "id": cid, "strategy": strategy, "text": text}


def row(rid: str, prompt, cands: list[dict], status: str, ranking: list[str], borda: dict | None = None, n: int = 0, agreement=None, **kw) -> dict:
    scores = [{"candidate_id": c, "borda": b, "mean_rank": None} for c, b in (borda or {}).items()]
    return {
        "record_id": rid, "group": f"g-{rid}", "task": "math", "prompt": prompt, "candidates": cands, "status": status,
        "annotations": [], "ranking": ranking, "ranking_scores": scores, "method": "borda", "agreement": agreement,
        "n_annotators": n, "best_strategy_votes": [], "suggested_ranking": kw.pop("suggested", []), "scores": kw.pop("scores", []),
        "dataset": "demo", "workspace": "curator", "pulled_at": PULLED_AT, "model_fingerprint": "fp123", "curator_version": "0.1.0", **kw,
    }


def pulled_rows() -> list[dict]:
    r1 = [cand("a", "direct", "4", 1), cand("b", "cot", "2 + 2 = 4. The answer is 4.", 2), cand("c", "clarify", "You ask for 2 + 2. It is 4.", 3)]
    r2 = [cand("d", "direct", "Paris", 1), cand("e", "cot", "France's capital is Paris.", 2), cand("f", "clarify", "The capital: Paris.", 3)]
    r6 = [cand("x", "direct", "yes", 1), cand("y", "cot", "It is yes.", 2)]
    scores = [{"candidate_id": "b", "alignment": 0.8, "influence": 0.2, "score": 1.5}, {"candidate_id": "a", "alignment": 0.1, "influence": 0.1, "score": -1.0}]
    return [
        row("r1", "What is 2 + 2?", r1, "submitted", ["b", "a", "c"], {"b": 4.0, "a": 2.0, "c": 0.0}, n=2, agreement=1.0, suggested=["b", "c", "a"], scores=scores),
        row("r2", "Capital of France?", r2, "submitted", ["f", "d", "e"], {"f": 2.0, "d": 1.0, "e": 0.0}, n=1),
        row("r3", "Discarded prompt", r1, "discarded", []),
        row("r4", "Pending prompt", r1, "pending", []),
        row("r6", "Is it?", r6, "submitted", ["x", "y"], {"x": 1.0, "y": 1.0}, n=2, agreement=0.0),
    ]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pulled(tmp_path: Path) -> Path:
    return write(tmp_path / "pulled.jsonl", pulled_rows())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


PROV = {"task": "math", "dataset": "demo"}


def test_sft_rows_exact(pulled: Path, tmp_path: Path) -> None:
    res = export(pulled, "sft", tmp_path / "sft.jsonl")
    rows = read_jsonl(res.out)
    assert rows == [
        {"prompt": "What is 2 + 2?", "completion": "2 + 2 = 4. The answer is 4.", "record_id": "r1", "group": "g-r1", **PROV, "n_annotators": 2, "agreement": 1.0, "candidate_id": "b", "strategy": "cot"},
        {"prompt": "Capital of France?", "completion": "The capital: Paris.", "record_id": "r2", "group": "g-r2", **PROV, "n_annotators": 1, "agreement": None, "candidate_id": "f", "strategy": "clarify"},
        {"prompt": "Is it?", "completion": "yes", "record_id": "r6", "group": "g-r6", **PROV, "n_annotators": 2, "agreement": 0.0, "candidate_id": "x", "strategy": "direct"},
    ]
    assert (res.rows, res.records, res.kept) == (3, 5, 3)
    assert res.filtered["discarded"] == 1 and res.filtered["pending"] == 1


def test_dpo_pairs_exact(pulled: Path, tmp_path: Path) -> None:
    res = export(pulled, "dpo", tmp_path / "dpo.jsonl")
    rows = read_jsonl(res.out)
    got = [(r["record_id"], r["chosen_id"], r["rejected_id"], r["chosen_rank"], r["rejected_rank"]) for r in rows]
    assert got == [("r1", "b", "a", 1, 2), ("r1", "b", "c", 1, 3), ("r2", "f", "d", 1, 2), ("r2", "f", "e", 1, 3)]
    assert rows[0] == {
        "prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4. The answer is 4.", "rejected": "4", "record_id": "r1", "group": "g-r1", **PROV,
        "n_annotators": 2, "agreement": 1.0, "chosen_id": "b", "rejected_id": "a", "chosen_strategy": "cot", "rejected_strategy": "direct",
        "chosen_rank": 1, "rejected_rank": 2, "margin": 1.0, "margin_kind": "rank",
    }
    assert res.filtered["tied"] == 1  # r6: its two candidates tie on Borda points: no preference
    bottom = read_jsonl(export(pulled, "dpo", tmp_path / "dpo2.jsonl", dpo_pairs="top-vs-bottom").out)
    assert [(r["chosen_id"], r["rejected_id"]) for r in bottom] == [("b", "c"), ("f", "e")]


def test_filters(pulled: Path, tmp_path: Path) -> None:
    two = read_jsonl(export(pulled, "sft", tmp_path / "a.jsonl", min_annotators=2).out)
    assert [r["record_id"] for r in two] == ["r1", "r6"]
    res = export(pulled, "sft", tmp_path / "b.jsonl", min_agreement=0.5)
    assert [r["record_id"] for r in read_jsonl(res.out)] == ["r1"]  # r2: one annotator, no W; r6: W = 0
    assert res.filtered["min_agreement"] == 2
    strat = read_jsonl(export(pulled, "sft", tmp_path / "c.jsonl", strategies=["direct", "clarify"]).out)
    assert [(r["record_id"], r["candidate_id"]) for r in strat] == [("r1", "a"), ("r2", "f"), ("r6", "x")]
    dpo = read_jsonl(export(pulled, "dpo", tmp_path / "d.jsonl", strategies=["direct", "clarify"]).out)
    assert [(r["chosen_id"], r["rejected_id"]) for r in dpo] == [("a", "c"), ("f", "d")]
    with pytest.raises(InputError, match="strategies 3"):  # one cot candidate per record: no pair left
        export(pulled, "dpo", tmp_path / "e.jsonl", strategies=["cot"])
    with pytest.raises(InputError, match="nothing to export"):
        export(pulled, "sft", tmp_path / "f.jsonl", strategies=["unknown"])


def test_three_formats_round_trip(pulled: Path, tmp_path: Path) -> None:
    import datasets

    expected = read_jsonl(export(pulled, "dpo", tmp_path / "x.jsonl").out)
    parquet = export(pulled, "dpo", tmp_path / "x.parquet")
    assert pq.read_table(parquet.out).to_pylist() == expected
    folder = export(pulled, "dpo", tmp_path / "xdir")
    assert datasets.load_from_disk(str(folder.out)).to_list() == expected
    assert folder.card == tmp_path / "xdir" / "README.md" and folder.card.exists()
    assert parquet.card == tmp_path / "x.README.md" and parquet.card.exists()
    again = export(pulled, "sft", tmp_path / "xdir")  # an existing export folder is replaced atomically
    assert len(datasets.load_from_disk(str(again.out))) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_card_has_counts_and_provenance(pulled: Path, tmp_path: Path) -> None:
    res = export(pulled, "sft", tmp_path / "sft.jsonl", min_annotators=2)
    card = card_path(res.out).read_text()
    for needle in ("records pulled: 5", "records kept: 2", "rows written: 2", "discarded by annotators: 1", "pending (no submitted answer): 1",
                   "min annotators (2): 1", "Argilla dataset: demo", "fp123", PULLED_AT, "- cot: 1", "- direct: 1", "alignment: mean 0.8",
                   "suggested top in 1 of 1", "prompt-completion"):
        assert needle in card, needle


def test_chat_prompt_stays_messages(tmp_path: Path) -> None:
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}]
    cands = [cand("a", "direct", "4", 1), cand("b", "cot", "2 + 2 = 4.", 2)]
    p = write(tmp_path / "chat.jsonl", [row("c1", chat, cands, "submitted", ["b", "a"], {"b": 1.0, "a": 0.0}, n=1), row("c2", "plain?", cands, "submitted", ["a", "b"], {"a": 1.0, "b": 0.0}, n=1)])
    sft = read_jsonl(export(p, "sft", tmp_path / "sft.jsonl").out)
    assert sft[0]["messages"] == chat + [{"role": "assistant", "content": "2 + 2 = 4."}]
    assert sft[1]["messages"] == [{"role": "user", "content": "plain?"}, {"role": "assistant", "content": "4"}]  # mixed: all chat
    dpo = pq.read_table(export(p, "dpo", tmp_path / "dpo.parquet").out).to_pylist()
    assert dpo[0]["prompt"] == chat
    assert dpo[0]["chosen"] == [{"role": "assistant", "content": "2 + 2 = 4."}]
    assert dpo[0]["rejected"] == [{"role": "assistant", "content": "4"}]


def test_bad_input(pulled: Path, tmp_path: Path) -> None:
    rows = pulled_rows()
    del rows[1]["candidates"]
    bad = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError, match=r"bad\.jsonl: line 2: missing field 'candidates'"):
        export(bad, "sft", tmp_path / "o.jsonl")
    rows = pulled_rows()
    del rows[0]["candidates"][1]["text"]
    with pytest.raises(InputError, match=r"line 1: candidates\[1\] is missing field 'text'"):
        export(write(tmp_path / "bad2.jsonl", rows), "sft", tmp_path / "o.jsonl")
    rows = pulled_rows()
    rows[2]["format_version"] = 99
    with pytest.raises(InputError, match=r"line 3: pulled-file format version 99 is newer"):
        export(write(tmp_path / "bad3.jsonl", rows), "sft", tmp_path / "o.jsonl")
    with pytest.raises(InputError, match="format 'orpo' is unknown"):
        export(pulled, "orpo", tmp_path / "o.jsonl")
    with pytest.raises(InputError, match=r"all filtered \(discarded 1, pending 1, no_answers 3\)"):  # rankings only: nothing for KTO
        export(pulled, "kto", tmp_path / "o.jsonl")
    with pytest.raises(InputError, match="unsupported output type"):
        export(pulled, "sft", tmp_path / "o.csv")
    with pytest.raises(InputError, match="no such file"):
        export(tmp_path / "missing.jsonl", "sft", tmp_path / "o.jsonl")


# --------------------------------------------------------------------------- ratings, labels, all pairs, KTO


def rated_rows() -> list[dict]:
    """Records as pull writes them for --questions rating (one candidate) and both (three)."""
    single = [cand("s1", "direct", "Paris.", 1)]
    three = [cand("a", "direct", "4", 1), cand("b", "cot", "2 + 2 = 4. The answer is 4.", 2), cand("c", "clarify", "It is 4.", 3)]
    return [
        row("k1", "Capital of France?", single, "submitted", [], n=2, questions="rating",
            candidate_ratings=[{"candidate_id": "s1", "mean": 4.5, "median": 4.5, "n": 2}], candidate_labels=[{"candidate_id": "s1", "label": "keep", "share": 1.0, "n": 2}]),
        row("k2", "Capital of Spain?", [cand("s2", "direct", "Rome.", 1)], "submitted", [], n=2, questions="rating",
            candidate_ratings=[{"candidate_id": "s2", "mean": 1.5, "median": 1.5, "n": 2}], candidate_labels=[{"candidate_id": "s2", "label": "drop", "share": 1.0, "n": 2}]),
        row("k3", "Capital of Italy?", [cand("s3", "cot", "Rome, as it is the capital.", 1)], "submitted", [], n=2, questions="rating",
            candidate_ratings=[{"candidate_id": "s3", "mean": 3.0, "median": 3.0, "n": 2}], candidate_labels=[{"candidate_id": "s3", "label": None, "share": 0.5, "n": 2}]),
        row("b1", "What is 2 + 2?", three, "submitted", ["b", "c", "a"], {"b": 4.0, "c": 2.0, "a": 0.0}, n=2, agreement=1.0, questions="both",
            candidate_ratings=[{"candidate_id": "a", "mean": 2.0, "median": 2.0, "n": 2}, {"candidate_id": "b", "mean": 5.0, "median": 5.0, "n": 2}, {"candidate_id": "c", "mean": 4.5, "median": 4.5, "n": 2}],
            candidate_labels=[{"candidate_id": "a", "label": "drop", "share": 1.0, "n": 2}, {"candidate_id": "b", "label": "keep", "share": 1.0, "n": 2}, {"candidate_id": "c", "label": "keep", "share": 1.0, "n": 2}]),
    ]


@pytest.fixture
def rated(tmp_path: Path) -> Path:
    return write(tmp_path / "rated.jsonl", rated_rows())


def test_sft_from_kept_and_rated_candidates(rated: Path, tmp_path: Path) -> None:
    kept = read_jsonl(export(rated, "sft", tmp_path / "kept.jsonl", sft_from="kept").out)
    assert [(r["record_id"], r["candidate_id"], r["label"]) for r in kept] == [("k1", "s1", "keep"), ("b1", "b", "keep"), ("b1", "c", "keep")]
    assert kept[0] == {"prompt": "Capital of France?", "completion": "Paris.", "record_id": "k1", "group": "g-k1", **PROV, "n_annotators": 2, "agreement": None, "candidate_id": "s1", "strategy": "direct", "rating": 4.5, "label": "keep"}
    high = read_jsonl(export(rated, "sft", tmp_path / "rated4.jsonl", sft_from="rated").out)
    assert [(r["record_id"], r["candidate_id"]) for r in high] == [("k1", "s1"), ("b1", "b"), ("b1", "c")]
    five = read_jsonl(export(rated, "sft", tmp_path / "rated5.jsonl", sft_from="rated", min_rating=5).out)
    assert [r["candidate_id"] for r in five] == ["b"]
    top = read_jsonl(export(rated, "sft", tmp_path / "top.jsonl").out)  # one record per prompt: ranking order, else ratings
    assert [(r["record_id"], r["candidate_id"]) for r in top] == [("k1", "s1"), ("k2", "s2"), ("k3", "s3"), ("b1", "b")]


def test_dpo_all_pairs_with_rank_and_rating_margins(rated: Path, tmp_path: Path) -> None:
    pairs = read_jsonl(export(rated, "dpo", tmp_path / "all.jsonl", dpo_pairs="all-pairs").out)
    assert [(r["chosen_id"], r["rejected_id"], r["margin"], r["margin_kind"]) for r in pairs] == [("b", "c", 1.0, "rank"), ("b", "a", 2.0, "rank"), ("c", "a", 1.0, "rank")]
    wide = read_jsonl(export(rated, "dpo", tmp_path / "wide.jsonl", dpo_pairs="all-pairs", min_margin=1).out)
    assert [(r["chosen_id"], r["rejected_id"]) for r in wide] == [("b", "a")]
    by_rating = read_jsonl(export(rated, "dpo", tmp_path / "rating.jsonl", dpo_pairs="all-pairs", order="rating", min_margin=1.0).out)
    assert [(r["chosen_id"], r["rejected_id"], r["margin"], r["margin_kind"]) for r in by_rating] == [("b", "a", 3.0, "rating"), ("c", "a", 2.5, "rating")]
    res = export(rated, "dpo", tmp_path / "tight.jsonl", dpo_pairs="all-pairs", order="rating", min_margin=2.9)
    assert res.rows == 1 and res.filtered["tied"] == 0 and res.filtered["no_answers"] == 3  # one-candidate records have no pair at all


def test_dpo_conversational_form(pulled: Path, tmp_path: Path) -> None:
    rows = read_jsonl(export(pulled, "dpo", tmp_path / "c.jsonl", conversational=True).out)
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is 2 + 2?"}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "2 + 2 = 4. The answer is 4."}] and rows[0]["rejected"] == [{"role": "assistant", "content": "4"}]
    assert "conversational preference" in card_path(tmp_path / "c.jsonl").read_text()


def test_kto_from_labels_and_from_ratings(rated: Path, tmp_path: Path) -> None:
    res = export(rated, "kto", tmp_path / "kto.jsonl")
    rows = read_jsonl(res.out)
    assert [(r["candidate_id"], r["label"], r["kto_from"]) for r in rows] == [("s1", True, "labels"), ("s2", False, "labels"), ("a", False, "labels"), ("b", True, "labels"), ("c", True, "labels")]
    assert rows[0] == {"prompt": "Capital of France?", "completion": "Paris.", "label": True, "record_id": "k1", "group": "g-k1", **PROV, "n_annotators": 2, "agreement": None, "candidate_id": "s1", "strategy": "direct", "rating": 4.5, "kto_from": "labels"}
    by_rating = read_jsonl(export(rated, "kto", tmp_path / "kto2.jsonl", kto_from="ratings").out)
    assert [(r["candidate_id"], r["label"]) for r in by_rating] == [("s1", True), ("s2", False), ("a", False), ("b", True), ("c", True)]  # s3 (3.0) is neither
    card = card_path(tmp_path / "kto.jsonl").read_text()
    assert "TRL unpaired preference" in card and "3 desirable, 2 undesirable" in card


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"dpo_pairs": "every"}, "--pairs"),
        ({"order": "votes"}, "--order 'votes' is unknown"),
        ({"sft_from": "best"}, "--sft-from 'best' is unknown"),
        ({"min_margin": -1}, "--min-margin -1 is invalid"),
        ({"min_rating": 2, "max_rating": 3}, "use 1 <= max-rating < min-rating <= 5"),
    ],
)
def test_bad_export_options_are_refused(rated: Path, tmp_path: Path, options: dict, needle: str) -> None:
    with pytest.raises(InputError, match=needle.replace("-", r"\-").replace("<", "<")):
        export(rated, "dpo", tmp_path / "x.jsonl", **options)
    assert not (tmp_path / "x.jsonl").exists()
