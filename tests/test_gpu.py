"""Tests that need CUDA (marker ``gpu``): skipped where there is none, run wherever one is present.

Fast per-example gradients against the exact reference on CUDA in fp32 and bf16, a real CUDA
out-of-memory error backed off from, and sampling on CUDA.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from curator.config import DeviceConfig, LoraSettings
from curator.gradients import fastgrad
from curator.gradients.computer import GradientComputer
from curator.model.models import load_model
from curator.model.sampling import SamplingConfig, sample_outputs
from tests.test_fastgrad import ALL_LINEAR, PACKING, mixed_examples, randomise_lora_b

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def cuda_model(dtype: str):
    return load_model("tiny-random", DeviceConfig(device="cuda", dtype=dtype))


@PACKING
def test_fast_matches_reference_on_cuda_fp32(packing):
    loaded = cuda_model("fp32")
    assert next(loaded.model.parameters()).device.type == "cuda"
    comp = GradientComputer(loaded.model, LoraSettings(target_modules=ALL_LINEAR))
    randomise_lora_b(comp)
    encs = mixed_examples(loaded.tokenizer)
    ref = comp.reference_gradients(encs)
    fast = fastgrad.per_example_gradients(comp.model, comp.params, encs, batch_size=6, packing=packing)
    assert fast.device.type == "cuda" and fast.dtype == torch.float32
    assert bool((F.cosine_similarity(fast, ref, dim=1) >= 0.9999).all())
    assert torch.allclose(fast, ref, rtol=1e-3, atol=1e-5)
    ckpt = fastgrad.per_example_gradients(comp.model, comp.params, encs, batch_size=6, packing=packing, gradient_checkpointing=True)
    assert bool((F.cosine_similarity(ckpt, ref, dim=1) >= 0.9999).all())


@PACKING
def test_fast_matches_reference_on_cuda_bf16(packing):
    """bf16 weights on the GPU (LoRA and the accumulation stay fp32): close to the fp32 reference on the CPU."""
    cpu = load_model("tiny-random", DeviceConfig(device="cpu"))
    ref_comp = GradientComputer(cpu.model, LoraSettings())
    randomise_lora_b(ref_comp)
    encs = mixed_examples(cpu.tokenizer)
    ref = ref_comp.reference_gradients(encs)
    loaded = cuda_model("bf16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    comp = GradientComputer(loaded.model, LoraSettings())
    randomise_lora_b(comp)
    assert all(p.dtype == torch.float32 for _, p in comp.params)
    fast = fastgrad.per_example_gradients(comp.model, comp.params, encs, batch_size=6, packing=packing, dtype="bf16").cpu()
    assert bool((F.cosine_similarity(fast, ref, dim=1) >= 0.99).all()), F.cosine_similarity(fast, ref, dim=1).tolist()
    same_device_ref = comp.reference_gradients(encs).cpu()
    assert bool((F.cosine_similarity(fast, same_device_ref, dim=1) >= 0.995).all())


def test_real_cuda_out_of_memory_is_backed_off(caplog):
    """A big batch on a capped allocator raises a real CUDA OOM; it is halved until it fits, and
    every row comes back with the same gradient as small batches give."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from curator.model.encoding import Encoded

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192)
    model = LlamaForCausalLM(config).to("cuda").eval()
    comp = GradientComputer(model, LoraSettings())
    ids = torch.randint(0, 32000, (24, 1000)).tolist()
    encs = [Encoded(input_ids=r, labels=[-100] * 500 + r[500:], n_prompt=500, n_response=500, truncated=False) for r in ids]
    small = fastgrad.per_example_gradients(comp.model, comp.params, encs, tokens_per_batch=2000, packing=False)
    torch.cuda.empty_cache()
    free = torch.cuda.mem_get_info()[1]
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + 3 * 2**30) / free))
    try:
        with caplog.at_level(logging.WARNING, logger="curator"):
            big = fastgrad.per_example_gradients(comp.model, comp.params, encs, tokens_per_batch=24000, packing=False)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert any("out of memory" in r.getMessage() for r in caplog.records)
    assert bool((F.cosine_similarity(big, small, dim=1) >= 0.9999).all())


def test_sampling_on_cuda():
    loaded = cuda_model("fp32")
    prompts = {f"g{i}": f"Question {i}: what is {i} + 1?" for i in range(5)}
    config = SamplingConfig(k=3, max_new_tokens=12, seed=3, batch_size=2)
    first = sample_outputs(loaded, prompts, config)
    assert sample_outputs(loaded, prompts, SamplingConfig(k=3, max_new_tokens=12, seed=3, batch_size=5)) == first
    assert all(len(v) == 3 for v in first.values())
    greedy = SamplingConfig(k=1, temperature=0.0, max_new_tokens=12)
    cpu = load_model("tiny-random", DeviceConfig(device="cpu"))
    assert sample_outputs(loaded, prompts, greedy) == sample_outputs(cpu, prompts, greedy)
