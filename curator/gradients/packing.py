"""Padding-free batches: several examples packed into one sequence, attention kept per example.

A length bucket padded to its longest member wastes compute on every padded position (16% of
the tokens of the demo's 16-row benchmark batches). Packing puts the examples of a batch end to
end in ONE row of length Σ len instead, as TRL's ``padding_free`` and transformers'
``DataCollatorWithFlattening`` do, with position ids restarting at 0 for each example. Every
per-token layer (embeddings, norms, MLPs, the LoRA Linears, the vocabulary projection) is then
unchanged, and the only operation that mixes tokens, causal self-attention, is run once per
example segment by ``_segment_attention``, registered with transformers' ``AttentionInterface``
and switched on only while a packed batch is in flight. On a CUDA model in bf16 or fp16 with
flash-attn installed, transformers' own flash-attention varlen kernel runs instead (``packed_kernel``).

That is exact only for models whose every cross-token interaction is that attention, with no
soft-capping or position bias (a sliding window is kept: a segment longer than the window gets
the band mask). ``PACKABLE_MODEL_TYPES`` lists the families checked against the per-example
reference on small random models (tests/test_fastgrad.py); every other model keeps the padded
path.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from curator.model.encoding import Encoded

ATTENTION_NAME = "curator_packed"
# Rotary positions from position_ids, per-token layers, causal attention (Mistral's and Qwen's with
# an optional sliding window): Llama (SmolLM2, the tiny test model), Mistral, Qwen2, Qwen3.
PACKABLE_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})

# The model keyword that carries the batch's (start, end) segments down to the attention: it passes
# through every decoder layer with the other attention kwargs, and so reaches the attention again
# when a checkpointed layer is recomputed in the backward, whatever thread runs it.
SEGMENTS_KWARG = "curator_segments"
_registered = False


def _segment_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal SDPA within each example segment of a packed row; [1, L, heads, head_dim] out."""
    segments = kwargs.get(SEGMENTS_KWARG)
    if segments is None:
        raise RuntimeError(f"attention implementation {ATTENTION_NAME!r} runs only on packed batches: pass packed_inputs(...) to the model inside curator.gradients.packing.packed_attention")
    for name in ("softcap", "position_bias"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"packed batches do not support attention with {name}")
    window = kwargs.get("sliding_window")
    gqa = query.shape[1] != key.shape[1]
    parts = []
    for s, e in segments:
        q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        if window is not None and e - s > window:  # position i sees j in (i - window, i], as transformers' mask
            i = torch.arange(e - s, device=query.device)
            band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
            parts.append(F.scaled_dot_product_attention(q, k, v, attn_mask=band, dropout_p=dropout, scale=scaling, enable_gqa=gqa))
        else:
            parts.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa))
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper, or ``model`` itself when it is not wrapped."""
    unwrap = getattr(model, "get_base_model", None)
    return unwrap() if callable(unwrap) else model


def supports_packing(model: Any) -> bool:
    """True when packing is exact for this model, peft-wrapped or not (see PACKABLE_MODEL_TYPES)."""
    base = base_model(model)
    cfg = base.config
    return (
        getattr(cfg, "model_type", None) in PACKABLE_MODEL_TYPES
        and bool(getattr(base, "_supports_attention_backend", False))
        and hasattr(base, "model")
    )


def flash_attn_installed() -> bool:
    """True when the flash-attn package (its varlen kernel) can be imported."""
    return importlib.util.find_spec("flash_attn") is not None


def packed_kernel(model: Any, attention: str = "auto") -> str:
    """The per-example attention for packed batches: ``flash`` (flash-attention varlen) or ``sdpa``.

    ``auto`` takes flash-attention where it is installed and can run (a CUDA model in bf16 or
    fp16), SDPA per segment otherwise; ``flash_attention_2`` asks for it; ``sdpa`` and ``eager``
    keep the per-segment SDPA (exact on every device)."""
    if attention == "flash_attention_2":
        return "flash"
    if attention != "auto":
        return "sdpa"
    p = next(base_model(model).parameters())
    return "flash" if p.device.type == "cuda" and p.dtype in (torch.bfloat16, torch.float16) and flash_attn_installed() else "sdpa"


def packed_inputs(segments: list[tuple[int, int]], device: torch.device, kernel: str = "sdpa") -> dict[str, Any]:
    """The attention keywords a packed batch passes to the model: the segments for SDPA, or the
    cumulative sequence lengths flash-attention's varlen kernel reads."""
    if kernel == "flash":
        cu = torch.tensor([0] + [e for _, e in segments], dtype=torch.int32, device=device)
        longest = max(e - s for s, e in segments)
        return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
    return {SEGMENTS_KWARG: segments}


@contextmanager
def packed_attention(model: Any, kernel: str = "sdpa") -> Iterator[None]:
    """Run the model's attention per example segment while the block is active (give the model
    ``packed_inputs``); restores the previous implementation."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION_NAME, _segment_attention)
        _registered = True
    cfg = base_model(model).config
    previous = cfg._attn_implementation
    cfg._attn_implementation = "flash_attention_2" if kernel == "flash" else ATTENTION_NAME
    try:
        yield
    finally:
        cfg._attn_implementation = previous


def pack(examples: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """One packed row: input ids [1, L] (each example's last token dropped: it predicts nothing
    scored), position ids [1, L] restarting per example, targets [1, L], and the segments."""
    ids: list[int] = []
    targets: list[int] = []
    positions: list[torch.Tensor] = []
    segments: list[tuple[int, int]] = []
    for e in examples:
        m = len(e.input_ids) - 1
        segments.append((len(ids), len(ids) + m))
        ids.extend(e.input_ids[:-1])
        targets.extend(e.labels[1:])
        positions.append(torch.arange(m, dtype=torch.long))
    return torch.tensor([ids], dtype=torch.long), torch.cat(positions)[None], torch.tensor([targets], dtype=torch.long), segments


def segment_ids(segments: list[tuple[int, int]]) -> torch.Tensor:
    """The example index of every position of a packed row, [L]."""
    return torch.cat([torch.full((e - s,), b, dtype=torch.long) for b, (s, e) in enumerate(segments)])

