"""Perplexity and self-aligned perplexity against manual computations on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from curator.model.encoding import encode
from curator.errors import InputError
from curator.alignment.likelihood import demo_chat, perplexity, pick_demos, response_nll, self_aligned_perplexity
from curator.model.models import LoadedModel, load_model


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    """One tiny model for the module: these tests never modify it."""
    return load_model("tiny-random")


def manual_ppl(loaded: LoadedModel, prompt, response: str, max_length: int = 512) -> float:
    """Unpadded single forward, log-softmax, gather the response tokens, exp(mean NLL)."""
    enc = encode(loaded.tokenizer, prompt, response, max_length)
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    nll = []
    for pos in range(1, len(enc.input_ids)):
        if enc.labels[pos] != -100:
            nll.append(-float(logp[pos - 1, enc.labels[pos]]))
    return math.exp(sum(nll) / len(nll))


def manual_chat_ppl(loaded: LoadedModel, messages: list[dict], response: str) -> float:
    """Perplexity of the response after a hand-built chat, rendered with the chat template."""
    tok = loaded.tokenizer
    p_text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    p_ids = tok(p_text, add_special_tokens=False)["input_ids"]
    r_ids = tok(full[len(p_text) :], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = torch.tensor(r_ids)
    nll = -logp[len(p_ids) - 1 :, :].gather(1, targets[:, None]).squeeze(1)
    return math.exp(float(nll.mean()))


PROMPTS = ["What is 2 + 2?", "Name a colour.", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi to everyone in the room, please."}]]
RESPONSES = ["4", "Blue is a colour that many people like a lot.", "Hi!"]


def test_perplexity_matches_manual_in_one_padded_batch(tiny: LoadedModel) -> None:
    got = perplexity(tiny, PROMPTS, RESPONSES, batch_size=8)
    lengths = {len(encode(tiny.tokenizer, p, r, 512).input_ids) for p, r in zip(PROMPTS, RESPONSES)}
    assert len(lengths) == 3  # different lengths, so the batch really is padded
    for p, r, value in zip(PROMPTS, RESPONSES, got):
        assert value == pytest.approx(manual_ppl(tiny, p, r), rel=1e-4)
        assert value >= 1.0
    single = [perplexity(tiny, [p], [r], batch_size=1)[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert got == pytest.approx(single, rel=1e-4)


def test_truncation_keeps_response_and_matches_manual(tiny: LoadedModel) -> None:
    prompt, response = "x" * 200, "the response survives"
    got = perplexity(tiny, [prompt], [response], max_length=64)[0]
    assert got == pytest.approx(manual_ppl(tiny, prompt, response, max_length=64), rel=1e-4)


def test_prompt_change_keeps_response_token_count(tiny: LoadedModel) -> None:
    response = "The answer is (B)."
    encs = [encode(tiny.tokenizer, p, response, 512) for p in ["Short?", "A much longer prompt with many more words in it?"]]
    stats = response_nll(tiny, encs)
    assert encs[0].n_response == encs[1].n_response
    assert stats[0][1] == stats[1][1] == encs[0].n_response
    assert stats[0][0] != stats[1][0]  # the prompt is context, so the NLL does change


DEMOS = [("What is 2 + 2?", "2 + 2 = 4."), ("Name an animal.", "A cat."), ("Capital of France?", "Paris."), ("Name a fruit.", "An apple.")]


def test_sappl_without_demos_is_perplexity(tiny: LoadedModel) -> None:
    assert self_aligned_perplexity(tiny, PROMPTS, RESPONSES, DEMOS, n_demos=0) == pytest.approx(perplexity(tiny, PROMPTS, RESPONSES), rel=1e-6)
    assert self_aligned_perplexity(tiny, PROMPTS, RESPONSES, [], n_demos=2) == pytest.approx(perplexity(tiny, PROMPTS, RESPONSES), rel=1e-6)


def test_sappl_with_demos_matches_manual_chat_and_skips_own_prompt(tiny: LoadedModel) -> None:
    prompt, response = "What is 2 + 2?", "4"
    got = self_aligned_perplexity(tiny, [prompt], [response], DEMOS, n_demos=2)[0]
    # DEMOS[0] is the candidate's own prompt: it is skipped, so the next two are used
    chat = [
        {"role": "user", "content": "Name an animal."},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": prompt},
    ]
    assert got == pytest.approx(manual_chat_ppl(tiny, chat, response), rel=1e-4)
    assert got != pytest.approx(perplexity(tiny, [prompt], [response])[0], rel=1e-4)
    assert all(p != prompt for p, _ in pick_demos(prompt, DEMOS, 10))


def test_sappl_batch_matches_single_and_system_prompt_stays_first(tiny: LoadedModel) -> None:
    batch = self_aligned_perplexity(tiny, PROMPTS, RESPONSES, DEMOS, n_demos=2)
    single = [self_aligned_perplexity(tiny, [p], [r], DEMOS, n_demos=2)[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert batch == pytest.approx(single, rel=1e-4)
    chat = demo_chat(PROMPTS[2], pick_demos(PROMPTS[2], DEMOS, 2))
    assert chat[0] == {"role": "system", "content": "Be brief."} and chat[-1]["content"].startswith("Say hi")
    assert batch[2] == pytest.approx(manual_chat_ppl(tiny, chat, RESPONSES[2]), rel=1e-4)


def test_sappl_truncation_drops_demos_before_own_prompt(tiny: LoadedModel) -> None:
    prompt, response = "Name a colour.", "Blue."
    long_demos = [("Tell me a story.", "Once upon a time " * 8), ("Name an animal.", "A cat.")]
    own = len(encode(tiny.tokenizer, prompt, response, 4096).input_ids)
    one = len(encode(tiny.tokenizer, demo_chat(prompt, long_demos[:1]), response, 4096).input_ids)
    budget = (own + one) // 2  # room for the own prompt, not for the first demo
    assert own <= budget < one
    got = self_aligned_perplexity(tiny, [prompt], [response], long_demos, n_demos=2, max_length=budget)[0]
    assert got == pytest.approx(perplexity(tiny, [prompt], [response])[0], rel=1e-6)


def test_input_errors(tiny: LoadedModel) -> None:
    with pytest.raises(InputError, match="one response per prompt"):
        perplexity(tiny, ["a", "b"], ["x"])
    with pytest.raises(InputError, match="n_demos"):
        self_aligned_perplexity(tiny, ["a"], ["x"], DEMOS, n_demos=-1)
    with pytest.raises(InputError, match="pair"):
        self_aligned_perplexity(tiny, ["a"], ["x"], ["not a pair"], n_demos=1)  # type: ignore[list-item]


@pytest.mark.slow
def test_smollm2_padded_batch_matches_single_and_sappl_runs() -> None:
    loaded = load_model("smollm2-135m")
    prompts = ["What is 2 + 2?", "Name a primary colour and say why it is primary."]
    responses = ["2 + 2 = 4. The answer is 4.", "Red."]
    batch = perplexity(loaded, prompts, responses)
    single = [perplexity(loaded, [p], [r])[0] for p, r in zip(prompts, responses)]
    assert batch == pytest.approx(single, rel=1e-4)
    assert batch[0] == pytest.approx(manual_ppl(loaded, prompts[0], responses[0]), rel=1e-4)
    sappl = self_aligned_perplexity(loaded, prompts, responses, DEMOS, n_demos=2)
    assert all(math.isfinite(v) and v >= 1.0 for v in sappl)
