"""Batched per-example LoRA gradients (hooks + einsums) against the exact per-example oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from curator.config import LoraSettings
from curator.model.encoding import encode
from curator.errors import InputError
from curator.gradients import packing as packing_mod
from curator.gradients.fastgrad import buckets, iter_per_example_gradients, per_example_gradients
from curator.gradients.computer import GradientComputer
from curator.gradients.packing import ATTENTION_NAME, pack, packed_attention, segment_ids, supports_packing

# None: packed into one row (the default wherever it is exact, as for the tiny Llama); False: padded
PACKING = pytest.mark.parametrize("packing", [None, False], ids=["packed", "padded"])

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def mixed_examples(tok, max_length: int = 200):
    """Plain and chat prompts of very different lengths, one of them truncated."""
    pairs = [
        ("What is 2 + 2?", "The answer is 4."),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}], "Blue."),
        ("Explain gravity in one sentence, please, for a child of five years old.", "Heavy things pull other things towards them, and the Earth is very heavy."),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Count to three."}], "One, two, three."),
        ("A long preamble. " * 14 + "Now answer: yes or no?", "Yes."),
        ("Short?", "A considerably longer response that goes on for a while to make this example long. " * 2),
    ]
    return [encode(tok, p, r, max_length) for p, r in pairs]


def randomise_lora_b(comp: GradientComputer, seed: int = 1) -> None:
    """Non-zero lora_B, so lora_A gradients are non-zero too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in comp.params:
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def assert_matches(comp: GradientComputer, fast: torch.Tensor, ref: torch.Tensor) -> None:
    assert fast.shape == ref.shape == (ref.shape[0], comp.n_params)
    assert fast.dtype == torch.float32
    cos = F.cosine_similarity(fast, ref, dim=1)
    assert bool((cos >= 0.9999).all()), cos.tolist()
    assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-6), float((fast - ref).abs().max())
    # every module's slice matches too (zero where the reference is zero)
    off = 0
    for name, p in comp.params:
        k = p.numel()
        f, r = fast[:, off : off + k], ref[:, off : off + k]
        if float(r.abs().max()) == 0.0:
            assert float(f.abs().max()) == 0.0, name
        else:
            assert bool((F.cosine_similarity(f, r, dim=1) >= 0.9999).all()), name
        off += k


@PACKING
@pytest.mark.parametrize("warm", [False, True], ids=["lora_B_zero", "lora_B_random"])
def test_fast_matches_reference_in_one_batch(tiny, warm, packing):
    comp = GradientComputer(tiny.model, LoraSettings())
    if warm:
        randomise_lora_b(comp)
    encs = mixed_examples(tiny.tokenizer)
    assert len({len(e.input_ids) for e in encs}) == len(encs)  # all lengths differ: real padding
    ref = comp.reference_gradients(encs)
    fast = per_example_gradients(comp.model, comp.params, encs, batch_size=len(encs), packing=packing)
    assert_matches(comp, fast, ref)
    names_nonzero = {n for (n, p), s in zip(comp.params, _slices(comp, ref)) if float(s.abs().max()) > 0}
    if warm:
        assert names_nonzero == {n for n, _ in comp.params}  # lora_A and lora_B of every module
    else:
        assert names_nonzero == {n for n, _ in comp.params if "lora_B" in n}


def _slices(comp: GradientComputer, g: torch.Tensor):
    off = 0
    for _, p in comp.params:
        yield g[:, off : off + p.numel()]
        off += p.numel()


@PACKING
def test_every_linear_module_and_other_scaling(tiny, packing):
    comp = GradientComputer(tiny.model, LoraSettings(r=4, alpha=32, target_modules=ALL_LINEAR, dropout=0.1, seed=5))
    randomise_lora_b(comp, seed=2)
    encs = mixed_examples(tiny.tokenizer)
    assert len(comp.params) == 2 * len(ALL_LINEAR) * 2
    ref = comp.reference_gradients(encs)
    assert_matches(comp, per_example_gradients(comp.model, comp.params, encs, batch_size=4, packing=packing), ref)


@PACKING
def test_order_preserved_with_buckets_and_no_side_effects(tiny, packing):
    comp = GradientComputer(tiny.model, LoraSettings())
    randomise_lora_b(comp)
    encs = mixed_examples(tiny.tokenizer)
    ref = comp.reference_gradients(encs)
    for kw in ({"batch_size": 1}, {"batch_size": 4}, {"tokens_per_batch": 300}, {}):
        assert_matches(comp, per_example_gradients(comp.model, comp.params, encs, packing=packing, **kw), ref)
    # the same row gives the same gradient whatever batch it sits in
    alone = per_example_gradients(comp.model, comp.params, encs[2:3], batch_size=1, packing=packing)[0]
    assert torch.allclose(alone, per_example_gradients(comp.model, comp.params, encs, batch_size=6, packing=packing)[2], rtol=1e-4, atol=1e-6)
    # the model's own attention is back, with no segments left in flight
    assert comp.model.get_base_model().config._attn_implementation != ATTENTION_NAME
    # no .grad left on the parameters, no hooks left on the model
    assert all(p.grad is None for _, p in comp.params)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in comp.model.modules())
    # the streaming form yields buckets of original indices covering every row once
    seen = sorted(i for idx, g in iter_per_example_gradients(comp.model, comp.params, encs, batch_size=4) for i in idx)
    assert seen == list(range(len(encs)))


def test_buckets_sort_and_respect_token_budget(tiny):
    encs = mixed_examples(tiny.tokenizer)
    lengths = [len(e.input_ids) for e in encs]
    for budget in (150, 300, 600, 10_000):
        groups = buckets(encs, tokens_per_batch=budget)
        assert sorted(i for g in groups for i in g) == list(range(len(encs)))
        for g in groups:
            padded = max(lengths[i] for i in g) * len(g)
            assert padded <= budget or len(g) == 1
        flat = [i for g in groups for i in g]
        assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    groups = buckets(encs, batch_size=4)
    assert [len(g) for g in groups] == [4, 2]
    both = buckets(encs, batch_size=2, tokens_per_batch=10_000)
    assert all(len(g) <= 2 for g in both)
    with pytest.raises(InputError):
        buckets(encs, batch_size=0)
    with pytest.raises(InputError):
        buckets(encs, tokens_per_batch=0)
    # packed batches are budgeted by their packed length (the sum), not longest × count
    for budget in (150, 300, 600):
        for g in buckets(encs, tokens_per_batch=budget, packed=True):
            assert sum(lengths[i] for i in g) <= budget or len(g) == 1
    assert len(buckets(encs, tokens_per_batch=sum(lengths), packed=True)) == 1
    assert len(buckets(encs, tokens_per_batch=sum(lengths))) > 1  # padded, the same budget holds fewer


def test_pack_layout(tiny):
    encs = mixed_examples(tiny.tokenizer)[:3]
    ids, positions, targets, segments = pack(encs)
    n = [len(e.input_ids) - 1 for e in encs]
    assert segments == [(0, n[0]), (n[0], n[0] + n[1]), (n[0] + n[1], sum(n))]
    assert ids.shape == positions.shape == targets.shape == (1, sum(n))
    for e, (s, t) in zip(encs, segments):
        assert ids[0, s:t].tolist() == e.input_ids[:-1]
        assert targets[0, s:t].tolist() == e.labels[1:]
        assert positions[0, s:t].tolist() == list(range(t - s))
    assert segment_ids(segments).tolist() == [0] * n[0] + [1] * n[1] + [2] * n[2]


def test_packing_only_where_exact(tiny, monkeypatch):
    comp = GradientComputer(tiny.model, LoraSettings())
    randomise_lora_b(comp)
    encs = mixed_examples(tiny.tokenizer)
    assert supports_packing(comp.model)  # a Llama
    ref = comp.reference_gradients(encs)
    # the per-segment attention exists only while a packed batch is in flight
    with pytest.raises(RuntimeError, match="only on packed batches"):
        packing_mod._segment_attention(None, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), None)
    with packed_attention(comp.model):
        assert comp.model.get_base_model().config._attn_implementation == ATTENTION_NAME
    assert comp.model.get_base_model().config._attn_implementation != ATTENTION_NAME
    # a family not known to be exact: auto falls back to padding, forcing packing is refused
    monkeypatch.setattr(packing_mod, "PACKABLE_MODEL_TYPES", frozenset())
    assert not supports_packing(comp.model)
    assert_matches(comp, per_example_gradients(comp.model, comp.params, encs, batch_size=3), ref)
    with pytest.raises(NotImplementedError, match="exact only for"):
        per_example_gradients(comp.model, comp.params, encs, packing=True)


@PACKING
def test_bf16_fidelity(tiny, packing):
    comp = GradientComputer(tiny.model, LoraSettings())
    randomise_lora_b(comp)
    encs = mixed_examples(tiny.tokenizer)
    fp32 = per_example_gradients(comp.model, comp.params, encs, batch_size=6, packing=packing)
    bf16 = per_example_gradients(comp.model, comp.params, encs, batch_size=6, dtype="bf16", packing=packing)
    assert bf16.dtype == torch.float32
    cos = F.cosine_similarity(bf16, fp32, dim=1)
    assert bool((cos >= 0.99).all()), cos.tolist()
    with pytest.raises(InputError):
        per_example_gradients(comp.model, comp.params, encs, dtype="fp8")


@PACKING
def test_example_without_response_tokens_is_refused(tiny, packing):
    comp = GradientComputer(tiny.model, LoraSettings())
    enc = encode(tiny.tokenizer, "What is 2 + 2?", "4", 32)
    bad = type(enc)(input_ids=enc.input_ids, labels=[-100] * len(enc.labels), n_prompt=len(enc.labels), n_response=0, truncated=True)
    with pytest.raises(InputError, match="no response token"):
        per_example_gradients(comp.model, comp.params, [enc, bad], packing=packing)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in comp.model.modules())
    assert comp.model.get_base_model().config._attn_implementation != ATTENTION_NAME


def test_scored_nll_matches_cross_entropy_and_its_gradient():
    from curator.gradients.scoredloss import fusable, scored_nll

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(300, 16, generator=g) * 3.0  # large logits: the max-shift must keep it finite
    targets = torch.randint(0, 300, (37,), generator=g)
    row_weight = torch.rand(37, generator=g)
    ref = (F.cross_entropy(hidden @ weight.t(), targets, reduction="none") * row_weight).sum()
    (ref_grad,) = torch.autograd.grad(ref * 2.5, hidden)
    got = scored_nll(hidden, weight, targets, row_weight)
    (got_grad,) = torch.autograd.grad(got * 2.5, hidden)  # the upstream gradient scales it
    assert torch.isfinite(got.detach()) and abs(got.detach().item() - ref.detach().item()) <= 1e-4 * abs(ref.detach().item())
    assert torch.allclose(got_grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert fusable(torch.nn.Linear(16, 300, bias=False).requires_grad_(False))
    assert not fusable(torch.nn.Linear(16, 300, bias=False))  # a trainable head needs its own gradient
    assert not fusable(torch.nn.Linear(16, 300).requires_grad_(False))  # a bias


def _random_model(family: str, vocab: int, **extra):
    """A seeded small random model of another packable family, built from its config (no download)."""
    import transformers

    names = {"mistral": ("MistralConfig", "MistralForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}
    config_cls, model_cls = (getattr(transformers, n) for n in names[family])
    config = config_cls(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=False, **extra)
    torch.manual_seed(0)
    return model_cls(config).eval()


@pytest.mark.parametrize(
    "family,extra",
    [
        ("mistral", {"sliding_window": 24}),  # shorter than most examples: the band mask is exercised
        ("mistral", {"sliding_window": None}),
        ("qwen2", {}),  # q/k/v with biases
        ("qwen2", {"use_sliding_window": True, "sliding_window": 24, "max_window_layers": 1, "layer_types": ["full_attention", "sliding_attention"]}),
        ("qwen3", {}),  # q/k norms
    ],
    ids=["mistral-window", "mistral", "qwen2", "qwen2-window", "qwen3"],
)
def test_other_packable_families_match_reference(tiny, family, extra):
    model = _random_model(family, len(tiny.tokenizer), **extra)
    comp = GradientComputer(model, LoraSettings())
    randomise_lora_b(comp)
    assert supports_packing(comp.model)
    encs = mixed_examples(tiny.tokenizer)
    assert max(len(e.input_ids) for e in encs) > 24
    ref = comp.reference_gradients(encs)
    assert_matches(comp, per_example_gradients(comp.model, comp.params, encs, batch_size=6), ref)
    assert_matches(comp, per_example_gradients(comp.model, comp.params, encs, batch_size=6, packing=False), ref)
