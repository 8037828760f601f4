"""Alignment functions, answer extraction, encoders and the batch scorer."""

from __future__ import annotations

import json
import re
from importlib import resources

import numpy as np
import pytest

from curator.alignment.similarity import (
    Embedder,
    HiddenStates,
    answer_agreement,
    embedding_alignment,
    extract_answer,
    hidden_alignment,
    hidden_similarity,
    mean_pairwise,
    rouge_l,
    score_alignment,
    token_f1,
)
from curator.errors import InputError
from curator.alignment.metrics import ALIGNMENT_METRICS, ALL_METRICS, parse_metrics
from curator.model.models import load_model

TEXTS = ["The answer is (B).", "Let's think step by step: 3 + 4 = 7. The answer is 7.", "A cat sat on the mat."]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def hidden() -> HiddenStates:
    return HiddenStates(load_model("tiny-random"), batch_size=2)


def demo_rows() -> list[dict]:
    folder = resources.files("curator.assets.demo")
    return [json.loads(line) for name in ("candidates.jsonl", "eval.jsonl") for line in (folder / name).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- lexical


def test_identical_texts_score_the_maximum() -> None:
    for t in TEXTS:
        assert rouge_l(t, t) == 1.0
        assert token_f1(t, t) == 1.0
        assert answer_agreement(t, t) == (1.0 if extract_answer(t) is not None else None)
    assert answer_agreement(TEXTS[0], TEXTS[0]) == 1.0


def test_rouge_l_exact_values_and_symmetry() -> None:
    # LCS of [the cat sat on the mat] and [the cat on a mat] is "the cat on mat": P=4/6, R=4/5
    assert rouge_l("The cat sat on the mat", "the cat on a mat") == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))
    assert rouge_l("a b c d", "d c b a") == pytest.approx(0.25)  # LCS 1 of 4 and 4
    assert rouge_l("alpha beta", "gamma") == 0.0
    assert rouge_l("Hello, world!", "hello world") == 1.0  # punctuation and case ignored
    for a in TEXTS:
        for b in TEXTS:
            assert rouge_l(a, b) == rouge_l(b, a)
            assert 0.0 <= rouge_l(a, b) <= 1.0


def test_token_f1_exact_values_and_symmetry() -> None:
    # normalised: [cat, sat] vs [cat, sat, down]: P=1, R=2/3
    assert token_f1("The cat sat!", "a cat sat down") == pytest.approx(0.8)
    # bag of tokens: order does not matter, counts do: [x, x, y] vs [x, y, y] share 2
    assert token_f1("x x y", "y y x") == pytest.approx(2 / 3)
    assert token_f1("yes", "no") == 0.0
    for a in TEXTS:
        for b in TEXTS:
            assert token_f1(a, b) == token_f1(b, a)
            assert 0.0 <= token_f1(a, b) <= 1.0


def test_extract_answer_on_every_demo_response() -> None:
    rows = demo_rows()
    assert len(rows) > 100
    for row in rows:
        expected = re.findall(r"The answer is \(([A-J])\)", row["response"])[-1]
        assert extract_answer(row["response"]) == expected, row["id"]
    evaluate = [r for r in rows if r.get("strategy") == "evaluate"]
    assert evaluate and all("Proposed answer" in r["response"] for r in evaluate)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the total is \\boxed{42}", "42"),
        ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("the answer is 7", "7"),
        ("The answer is 7.0.", "7"),
        ("... so 1,234 apples", "1234"),
        ("Answer: C", "C"),
        ("I guess the answer is (a)... no, THE ANSWER IS (J).", "J"),
        ("The answer is Paris.", "paris"),
        ("Just some plain text without any answer.", None),
        ("", None),
    ],
)
def test_extract_answer_formats(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_answer_agreement_cases() -> None:
    assert answer_agreement("The answer is (C).", "so the answer is (C)") == 1.0
    assert answer_agreement("The answer is (C).", "The answer is (D).") == 0.0
    assert answer_agreement("The answer is (C).", "no idea") == 0.0  # a sample without answer disagrees
    assert answer_agreement("no idea", "The answer is (C).") is None  # the metric does not apply


def test_empty_samples_are_excluded_not_scored_zero() -> None:
    cand = "The answer is (B)."
    assert mean_pairwise(rouge_l, cand, [cand, "", "   "]) == 1.0
    assert mean_pairwise(answer_agreement, cand, ["The answer is (B).", "The answer is (A).", "\n"]) == 0.5
    assert mean_pairwise(rouge_l, cand, ["", " "]) is None
    assert mean_pairwise(answer_agreement, "nothing", ["The answer is (B)."]) is None
    scores = score_alignment(["rouge-l", "token-f1", "answer"], [cand, cand], [[cand, "", " "], ["", "\t"]])
    assert scores == {"rouge-l": [1.0, None], "token-f1": [1.0, None], "answer": [1.0, None]}


# --------------------------------------------------------------------------- metric names


def test_unknown_metric_lists_valid_names() -> None:
    with pytest.raises(InputError) as err:
        parse_metrics("rouge-l, foo")
    assert "unknown metric 'foo'" in str(err.value)
    for name in ALL_METRICS:
        assert name in str(err.value)
    with pytest.raises(InputError, match="unknown metric 'bar'"):
        score_alignment(["bar"], ["x"], [["y"]])
    with pytest.raises(InputError, match="likelihood"):
        score_alignment(["perplexity"], ["x"], [["y"]])
    with pytest.raises(InputError, match="no metric"):
        parse_metrics(" , ")


def test_parse_metrics_strips_and_dedups() -> None:
    assert parse_metrics(" rouge-l,answer , rouge-l,Token_F1,sappl") == ["rouge-l", "answer", "token-f1", "sappl"]
    assert set(ALIGNMENT_METRICS) <= set(ALL_METRICS)


# --------------------------------------------------------------------------- encoders


def test_embedder_unit_vectors_and_paraphrase_ranking(embedder: Embedder) -> None:
    vecs = embedder.embed(["The cat sat on the mat.", "A cat was sitting on the mat.", "Quarterly revenue grew by ten percent.", "The cat sat on the mat."], batch_size=3)
    assert vecs.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3
    assert embedding_alignment(vecs[0], vecs[3:4]) == pytest.approx(1.0, abs=1e-5)
    assert embedding_alignment(vecs[0], vecs[1:2]) == pytest.approx(embedding_alignment(vecs[1], vecs[0:1]), abs=1e-6)
    assert -1.0 <= embedding_alignment(vecs[0], vecs[1:3]) <= 1.0  # type: ignore[operator]


def test_hidden_states_shape_identity_symmetry_and_batching(hidden: HiddenStates) -> None:
    texts = ["The answer is (B).", "Blue is a nice colour, is it not?", "x", "The answer is (B)."]
    states = hidden.encode(texts)
    n_layers = hidden.model.config.num_hidden_layers
    assert states.shape == (4, n_layers, hidden.model.config.hidden_size)
    assert np.allclose(np.linalg.norm(states, axis=-1), 1.0, atol=1e-5)
    assert hidden_similarity(states[0], states[3]) == pytest.approx(1.0, abs=1e-5)
    assert hidden_similarity(states[0], states[1]) == pytest.approx(hidden_similarity(states[1], states[0]), abs=1e-9)
    singles = np.concatenate([hidden.encode([t]) for t in texts])
    assert np.allclose(states, singles, atol=1e-4)  # padding does not change the result
    assert hidden_alignment(states[0], states[3:4]) == pytest.approx(1.0, abs=1e-5)
    assert hidden_alignment(states[0], states[1:3]) == pytest.approx(np.mean([hidden_similarity(states[0], s) for s in states[1:3]]))


def test_score_alignment_all_metrics(embedder: Embedder, hidden: HiddenStates) -> None:
    cands = ["The answer is (B).", "I think the answer is (C) because of the cat.", "no answer"]
    samples = [["The answer is (B).", "", "The answer is (B)."], ["The answer is (A).", "the cat says the answer is (C)"], ["  "]]
    scores = score_alignment(list(ALIGNMENT_METRICS), cands, samples, embedder=embedder, hidden=hidden)
    assert list(scores) == list(ALIGNMENT_METRICS)
    for name in ALIGNMENT_METRICS:
        assert scores[name][0] == pytest.approx(1.0, abs=1e-5)
        assert scores[name][2] is None
    assert scores["answer"][1] == 0.5
    assert scores["rouge-l"][1] == pytest.approx(np.mean([rouge_l(cands[1], s) for s in samples[1]]))
    emb = embedder.embed([cands[1], *samples[1]])
    assert scores["embedding"][1] == pytest.approx(embedding_alignment(emb[0], emb[1:]), abs=1e-5)
    hs = hidden.encode([cands[1], *samples[1]])
    assert scores["hidden"][1] == pytest.approx(hidden_alignment(hs[0], hs[1:]), abs=1e-4)
    with pytest.raises(InputError, match="hidden"):
        score_alignment(["hidden"], cands, samples)
    with pytest.raises(InputError, match="sample lists"):
        score_alignment(["rouge-l"], cands, samples[:2])


@pytest.mark.slow
def test_smollm2_hidden_states_rank_a_paraphrase_above_an_unrelated_sentence() -> None:
    states = HiddenStates(load_model("smollm2-135m")).encode(["The cat sat on the mat.", "A cat was sitting on the mat.", "Quarterly revenue grew by ten percent."])
    assert hidden_similarity(states[0], states[1]) > hidden_similarity(states[0], states[2])
