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
        "chosen_rank": 1, "rejected_rank": 2,
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
    for needle in ("records pulled: 5", "records kept: 2", "rows written: 2", "discarded by annotators: 1", "pending (no submitted ranking): 1",
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
    with pytest.raises(InputError, match="format 'kto' is unknown"):
        export(pulled, "kto", tmp_path / "o.jsonl")
    with pytest.raises(InputError, match="unsupported output type"):
        export(pulled, "sft", tmp_path / "o.csv")
    with pytest.raises(InputError, match="no such file"):
        export(tmp_path / "missing.jsonl", "sft", tmp_path / "o.jsonl")
