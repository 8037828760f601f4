"""Candidate files in distilabel's and Argilla's ranking-template columns, mapped to curator's rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from curator.errors import InputError
from curator.io.conventions import detect, load_any
from curator.io.data import content_hash
from tests.conftest import write_jsonl
from tests.test_cli import invoke


def test_distilabel_rows_become_one_candidate_per_generation(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "What is 2+2?", "generations": ["4", "It is 4.", None], "generation_models": ["m-small", "m-large", "m-broken"]},
        {"instruction": "Capital of France?", "generations": ["Paris"]},
    ])
    cands, kind = load_any(p)
    assert kind == "distilabel"
    assert [(c.prompt, c.response, c.strategy) for c in cands] == [("What is 2+2?", "4", "m-small"), ("What is 2+2?", "It is 4.", "m-large"), ("Capital of France?", "Paris", "generation_1")]
    assert cands[0].group == cands[1].group == "g-" + content_hash("What is 2+2?") and cands[2].group != cands[0].group


def test_argilla_ranking_template_rows(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Q1", "response1": "a", "response2": "b", "response10": "j"}, {"instruction": "Q2", "response1": "c", "response2": ""}])
    cands, kind = load_any(p)
    assert kind == "argilla-ranking"
    assert [(c.prompt, c.response, c.strategy) for c in cands] == [("Q1", "a", "response1"), ("Q1", "b", "response2"), ("Q1", "j", "response10"), ("Q2", "c", "response1")]


def test_curator_rows_are_read_as_they_are(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "Q", "response": "A", "strategy": "direct"}])
    assert load_any(p)[1] == "curator" and detect([]) == "curator"


@pytest.mark.parametrize(
    "rows, needle",
    [
        ([{"instruction": "Q", "generations": []}], "line 1: field 'generations' must be a non-empty list"),
        ([{"instruction": "Q", "generations": ["a", "b"], "generation_models": ["m"]}], "one model per generation (2)"),
        ([{"instruction": "Q", "response1": None, "response2": " "}], "line 1: no non-empty response in this argilla-ranking row"),
        ([{"instruction": "Q", "generations": ["a"]}, {"instruction": 7, "generations": ["b"]}], "line 2 (candidate 1): field 'prompt' has type int"),
    ],
)
def test_bad_rows_name_the_file_and_row(tmp_path: Path, rows: list, needle: str) -> None:
    with pytest.raises(InputError, match=str(tmp_path).replace(".", r"\.")) as e:
        load_any(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert needle in str(e.value)


def test_push_says_which_mapping_it_used_before_reaching_the_server(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Q", "generations": ["a", "b"], "generation_models": ["x", "y"]}])
    r = invoke(["argilla", "push", str(p), "--dataset", "d", "--api-url", "http://127.0.0.1:9", "--api-key", "k", "--retries", "1"])
    assert "read " + str(p) + " as distilabel rows: 2 candidates in 1 prompts" in r.stdout
    assert r.exit_code == 1 and "cannot reach the Argilla server" in r.stderr
