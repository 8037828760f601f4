"""The questions that fit the data, their suggestions and the compatibility check (no server)."""

from __future__ import annotations

import pandas as pd
import pytest

from curator.errors import InputError
from curator.io.data import Candidate
from curator.integrations.argilla.mapping import plan_records, suggested_rating
from curator.integrations.argilla.schema import DatasetMismatchError, check_compatible, questions_of, spec_for
from tests.test_cli import assert_one_error_line, invoke
from tests.conftest import write_jsonl


def cands(group_sizes: list[int]) -> list[Candidate]:
    return [Candidate(f"g{g}-{k}", f"Q{g}?", f"A{k}.", f"s{k}", None, f"g{g}") for g, n in enumerate(group_sizes) for k in range(n)]


@pytest.mark.parametrize("sizes, mode, want", [([1, 1], "auto", "rating"), ([2, 3], "auto", "ranking"), ([1, 3], "auto", "ranking"), ([50], "auto", "ranking"),
                                                ([2, 3], "rating", "rating"), ([2, 3], "both", "both"), ([1], "rating", "rating")])
def test_questions_fit_the_largest_group(sizes: list[int], mode: str, want: str) -> None:
    spec = spec_for(cands(sizes), questions=mode)
    assert spec.questions == want and spec.n_slots == max(sizes)


def test_more_than_50_candidates_is_refused_with_how_to_split() -> None:
    with pytest.raises(InputError, match=r"group 'g1' has 51 candidates, and Argilla shows at most 50 per record .* split the group"):
        spec_for(cands([3, 51]))
    for mode in ("ranking", "both"):
        with pytest.raises(InputError, match=f"--questions {mode} needs prompts with 2 to 50 candidates .* use --questions rating"):
            spec_for(cands([1, 1]), questions=mode)
    with pytest.raises(InputError, match="--questions 'vote' is unknown"):
        spec_for(cands([2]), questions="vote")


def test_push_cli_refuses_too_many_candidates_before_reaching_the_server(tmp_path) -> None:
    rows = [{"prompt": "Q", "response": f"A{k}", "strategy": f"s{k}"} for k in range(51)]
    p = write_jsonl(tmp_path / "c.jsonl", rows)
    assert_one_error_line(invoke(["argilla", "push", str(p), "--dataset", "d", "--api-url", "http://127.0.0.1:9", "--api-key", "k"]), "has 51 candidates", "at most 50")


def test_rating_suggestions_follow_the_combined_score() -> None:
    assert [suggested_rating(x) for x in (-9, -1.5, -1.3, -0.5, -0.3, 0, 0.3, 0.5, 1.3, 1.5, 9)] == [1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5]  # cuts at ±0.405, ±1.386
    cs = cands([1, 1, 1])
    table = pd.DataFrame({"id": [c.id for c in cs], "rank": [1, 1, 1], "score": [1.0, -0.2, None], "alignment": [1.0, -0.2, None]})
    plans = plan_records(cs, spec_for(cs, keep_threshold=-0.5), table)
    got = [{s["question_name"]: s["value"] for s in p["suggestions"]} for p in plans]
    assert got == [{"rating_1": 4, "keep_1": "keep"}, {"rating_1": 3, "keep_1": "keep"}, {}]  # no score: no rating suggestion
    plans = plan_records(cs, spec_for(cs, keep_threshold=0.0), table)
    assert plans[1]["suggestions"][1] == {"question_name": "keep_1", "value": "drop", "score": pytest.approx(0.4502, abs=1e-4), "agent": plans[1]["suggestions"][1]["agent"]}


def described(mode: str, n: int) -> dict:
    fields = {"prompt": "text", **{f"candidate_{i}": "text" for i in range(1, n + 1)}}
    questions: dict = {"comment": ("text", None)}
    if mode in ("ranking", "both"):
        questions.update(ranking=("ranking", [f"candidate_{i}" for i in range(1, n + 1)]), best_strategy=("label_selection", ["s0", "s1"]))
    if mode in ("rating", "both"):
        questions.update({f"rating_{i}": ("rating", [1, 2, 3, 4, 5]) for i in range(1, n + 1)})
        questions.update({f"keep_{i}": ("label_selection", ["keep", "drop"]) for i in range(1, n + 1)})
    spec = spec_for(cands([n]), questions=mode)
    return {"fields": fields, "questions": questions, "metadata": {k: t for k, (t, _) in spec.metadata().items()}, "vectors": {}}


def test_an_existing_dataset_with_other_questions_is_refused() -> None:
    assert questions_of(described("both", 2)) == "both"
    check_compatible(described("rating", 1), spec_for(cands([1])), "ds")
    with pytest.raises(DatasetMismatchError, match="dataset 'ds' has ranking questions, this push asks for rating questions: push to a new --dataset name, or pass --questions ranking"):
        check_compatible(described("ranking", 2), spec_for(cands([2]), questions="rating"), "ds")
    broken = described("rating", 2)
    del broken["questions"]["keep_2"]
    with pytest.raises(DatasetMismatchError, match="lacks the questions 'rating_2' and 'keep_2'"):
        check_compatible(broken, spec_for(cands([2]), questions="rating"), "ds")
