"""Sampling the target model: determinism, batch independence, the JSONL cache and resumption."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from curator.model.encoding import render
from curator.errors import InputError
from curator.model.models import LoadedModel, load_model
from curator.model.decoding import pick as _pick
from curator.model.sampling import (
    SamplingConfig,
    SamplingStats,

    cache_key,
    generate_batch,
    prompt_text_for_generation,
    row_seed,
    sample_outputs,
    stop_token_ids,
)

PROMPTS: dict[str, object] = {
    "g0": "What is 2 + 2?",
    "g1": "Name a prime number larger than ten, please, and say why it is prime.",
    "g2": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of France?"}],
    "g3": "Hi",
    "g4": "Explain gravity to a child in one sentence.",
    "g5": [{"role": "user", "content": "Say yes."}],
}
CFG = SamplingConfig(k=3, max_new_tokens=12, batch_size=4)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model is faster on one thread, and the shared 2-core CPU makes 2 threads stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("tiny-random")


def _forbid_generation(monkeypatch: pytest.MonkeyPatch, loaded: LoadedModel) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("the model was run although everything was cached")

    monkeypatch.setattr(loaded.model, "forward", boom)


# --------------------------------------------------------------------------- prompts and config


def test_prompt_text_matches_encoding_render(loaded):
    for prompt in PROMPTS.values():
        assert prompt_text_for_generation(loaded.tokenizer, prompt) == render(loaded.tokenizer, prompt, "x")[0]
    tok = load_model("tiny-random").tokenizer
    tok.chat_template = None
    assert prompt_text_for_generation(tok, "Hi") == tok.bos_token + "Hi\n" == render(tok, "Hi", "x")[0]


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"k": 0}, "--samples"),
        ({"temperature": -0.1}, "--temperature"),
        ({"top_p": 0.0}, "--top-p"),
        ({"top_p": 1.5}, "--top-p"),
        ({"max_new_tokens": 0}, "--max-new-tokens"),
        ({"batch_size": 0}, "--sample-batch-size"),
    ],
)
def test_config_validation_names_the_option(kwargs, option):
    with pytest.raises(InputError, match=option):
        SamplingConfig(**kwargs)


def test_cache_key_ignores_batch_size_only():
    base = cache_key("fp", "p", SamplingConfig())
    assert base == cache_key("fp", "p", SamplingConfig(batch_size=1))
    assert base == cache_key("fp", "p", SamplingConfig(temperature=0.7, top_p=0.9))
    assert cache_key("fp", "p", SamplingConfig(temperature=0)) == cache_key("fp", "p", SamplingConfig(temperature=0.0))
    others = [cache_key("fp2", "p", SamplingConfig()), cache_key("fp", "q", SamplingConfig())]
    others += [cache_key("fp", "p", SamplingConfig(**{f: v})) for f, v in [("k", 5), ("temperature", 1.0), ("top_p", 0.5), ("max_new_tokens", 7), ("seed", 1)]]
    assert len({base, *others}) == len(others) + 1


# --------------------------------------------------------------------------- the nucleus sampler


def test_pick_follows_the_nucleus_distribution():
    probs = torch.tensor([0.2, 0.5, 0.3, 1e-3])
    logits = probs.log().expand(2000, 4)
    u = (torch.arange(2000, dtype=torch.float32) + 0.5) / 2000  # an even grid stands in for uniforms
    cfg = SamplingConfig(temperature=1.0, top_p=0.75)
    counts = torch.bincount(_pick(logits, u, cfg), minlength=4).float() / 2000
    # top_p=0.75 keeps {0.5, 0.3} (mass 0.8) and renormalises them
    assert counts.tolist() == pytest.approx([0.0, 0.625, 0.375, 0.0], abs=2e-3)
    full = torch.bincount(_pick(logits, u, SamplingConfig(temperature=1.0, top_p=1.0)), minlength=4).float() / 2000
    assert full.tolist() == pytest.approx((probs / probs.sum()).tolist(), abs=2e-3)
    assert _pick(logits[:3], u[:3], SamplingConfig(temperature=0)).tolist() == [1, 1, 1]


@pytest.mark.parametrize("scale", [0.05, 3.0])  # a flat row (nucleus wider than the probe) and a peaked one
def test_pick_matches_a_full_sort_nucleus(scale):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, generator=gen) * scale
    cfg = SamplingConfig(temperature=0.7, top_p=0.9)
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    sp, si = probs.sort(descending=True)
    n_keep = int(((sp.cumsum(0) - sp) < cfg.top_p).sum())
    expected = torch.zeros(1000)
    expected[si[:n_keep]] = sp[:n_keep] / sp[:n_keep].sum()
    n = 3000
    u = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    counts = torch.bincount(_pick(logits.expand(n, 1000), u, cfg), minlength=1000).float()
    # inverse-CDF sampling on an even grid of n uniforms hits each token n*q times, give or take one
    assert (counts - n * expected).abs().max() <= 1.01
    assert (n_keep > 256) == (scale < 1)


# --------------------------------------------------------------------------- sample_outputs


def test_exactly_k_text_samples_per_group_including_chat_prompts(loaded):
    stats = SamplingStats()
    out = sample_outputs(loaded, PROMPTS, CFG, stats=stats)
    assert list(out) == list(PROMPTS)
    assert all(len(s) == CFG.k and all(isinstance(x, str) for x in s) for s in out.values())
    assert len(set(out["g2"])) > 1  # sampled rows differ
    assert stats.generated == len(PROMPTS) and stats.cached == 0
    assert not any("<|im_end|>" in x or "<|im_start|>" in x for s in out.values() for x in s)


def test_deterministic_under_the_seed(loaded):
    a = sample_outputs(loaded, PROMPTS, CFG)
    b = sample_outputs(loaded, PROMPTS, CFG)
    c = sample_outputs(loaded, PROMPTS, dataclasses.replace(CFG, seed=1))
    assert a == b
    assert all(a[g] != c[g] for g in PROMPTS)


def test_samples_do_not_depend_on_batching(loaded):
    # Exact equality holds here; with a real model, padding changes float rounding slightly, and
    # a row could in principle flip where its uniform falls within ~1e-7 of a CDF boundary.
    single = sample_outputs(loaded, PROMPTS, dataclasses.replace(CFG, batch_size=1))
    batched = sample_outputs(loaded, PROMPTS, dataclasses.replace(CFG, batch_size=4))
    subset = sample_outputs(loaded, {g: PROMPTS[g] for g in ["g4", "g1"]}, CFG)
    assert single == batched
    assert subset == {g: single[g] for g in ["g4", "g1"]}


def test_rows_stop_at_a_stop_token_and_other_rows_are_unaffected(loaded):
    tok = loaded.tokenizer
    ids = [tok(prompt_text_for_generation(tok, p), add_special_tokens=False)["input_ids"] for p in PROMPTS.values()]
    seeds = [[row_seed(0, str(i), j) for j in range(3)] for i in range(len(ids))]
    cfg = SamplingConfig(k=3, max_new_tokens=16)
    free = generate_batch(loaded.model, ids, seeds, cfg, set(), tok.pad_token_id)
    assert all(len(r) == 16 for rows in free for r in rows)
    stop = free[0][0][3]  # a token that row 0 draws at step 3
    stopped = generate_batch(loaded.model, ids, seeds, cfg, {stop}, tok.pad_token_id)
    for rows_free, rows_stopped in zip(free, stopped):
        for f, s in zip(rows_free, rows_stopped):
            assert s == (f[: f.index(stop)] if stop in f else f)
    assert any(stop not in f for rows in free for f in rows)  # some rows ran on after others left


def test_empty_samples_are_counted(loaded, monkeypatch):
    monkeypatch.setattr("curator.model.sampling.stop_token_ids", lambda _: set(range(len(loaded.tokenizer))))
    stats = SamplingStats()
    out = sample_outputs(loaded, {"a": "x", "b": "y"}, SamplingConfig(k=2, max_new_tokens=4), stats=stats)
    assert out == {"a": ["", ""], "b": ["", ""]} and stats.empty == 4


def test_greedy_equals_a_manual_greedy_decode(loaded):
    tok, model = loaded.tokenizer, loaded.model
    stops = stop_token_ids(loaded)
    out = sample_outputs(loaded, PROMPTS, SamplingConfig(k=2, temperature=0, max_new_tokens=10, batch_size=3))
    for g, prompt in PROMPTS.items():
        ids = tok(prompt_text_for_generation(tok, prompt), add_special_tokens=False)["input_ids"]
        new: list[int] = []
        with torch.no_grad():
            for _ in range(10):
                nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt in stops:
                    break
                new.append(nxt)
        expected = tok.decode(new, skip_special_tokens=True).strip()
        assert out[g] == [expected, expected], g


# --------------------------------------------------------------------------- the cache


def test_cache_is_reused_and_invalidated_only_by_model_or_config(loaded, tmp_path, monkeypatch):
    path = tmp_path / "samples.jsonl"
    first = sample_outputs(loaded, PROMPTS, CFG, cache_path=path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0] == {"format_version": 1} and len(lines) == 1 + len(PROMPTS)
    assert {x["group"] for x in lines[1:]} == set(PROMPTS)

    with monkeypatch.context() as mp:
        _forbid_generation(mp, loaded)
        stats = SamplingStats()
        again = sample_outputs(loaded, PROMPTS, dataclasses.replace(CFG, batch_size=1), cache_path=path, stats=stats)
        assert again == first and stats.generated == 0 and stats.cached == len(PROMPTS)
        with pytest.raises(AssertionError, match="was run"):
            sample_outputs(loaded, PROMPTS, dataclasses.replace(CFG, temperature=1.0), cache_path=path)

    for changed_loaded, cfg in [(dataclasses.replace(loaded, fingerprint="other-model"), CFG), (loaded, dataclasses.replace(CFG, max_new_tokens=5))]:
        stats = SamplingStats()
        sample_outputs(changed_loaded, PROMPTS, cfg, cache_path=path, stats=stats)
        assert stats.generated == len(PROMPTS) and stats.cached == 0


def test_torn_last_line_is_ignored(loaded, tmp_path, monkeypatch):
    path = tmp_path / "samples.jsonl"
    subset = {g: PROMPTS[g] for g in ["g0", "g1", "g2"]}
    first = sample_outputs(loaded, subset, CFG, cache_path=path)
    with path.open("a") as fh:
        fh.write('{"key": "abc", "group": "g9", "samp')
    with monkeypatch.context() as mp:
        _forbid_generation(mp, loaded)
        assert sample_outputs(loaded, subset, CFG, cache_path=path) == first
    stats = SamplingStats()
    both = sample_outputs(loaded, PROMPTS, CFG, cache_path=path, stats=stats)  # appends after the repaired file
    assert stats.cached == 3 and stats.generated == len(PROMPTS) - 3
    assert all(json.loads(x) for x in path.read_text().splitlines())
    assert {g: both[g] for g in subset} == first


def test_a_foreign_file_is_refused(loaded, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "p", "response": "r"}\n')
    with pytest.raises(InputError, match="not a curator sampling cache"):
        sample_outputs(loaded, PROMPTS, CFG, cache_path=path)
    assert path.read_text() == '{"prompt": "p", "response": "r"}\n'


def test_interrupted_run_resumes_to_the_clean_result(loaded, tmp_path):
    clean = sample_outputs(loaded, PROMPTS, CFG)
    path = tmp_path / "samples.jsonl"
    calls: list[tuple[int, int]] = []

    def stop_after_first_batch(stage: str, done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 2:  # the first call reports the cached count, the second the first batch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_outputs(loaded, PROMPTS, CFG, cache_path=path, progress=stop_after_first_batch)
    assert calls == [(0, len(PROMPTS)), (CFG.batch_size, len(PROMPTS))]
    stats = SamplingStats()
    resumed = sample_outputs(loaded, PROMPTS, CFG, cache_path=path, stats=stats)
    assert stats.cached == CFG.batch_size and stats.generated == len(PROMPTS) - CFG.batch_size
    assert resumed == clean


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_smollm2_returns_text_samples():
    loaded = load_model("smollm2-135m")
    prompts = {"a": "What is the capital of France?", "b": [{"role": "user", "content": "Name a colour."}]}
    stats = SamplingStats()
    out = sample_outputs(loaded, prompts, SamplingConfig(k=2, max_new_tokens=16), stats=stats)
    assert set(out) == {"a", "b"} and all(len(s) == 2 for s in out.values())
    assert all(x and "<|im_end|>" not in x and "<|im_start|>" not in x for s in out.values() for x in s)
    assert stats.empty == 0
