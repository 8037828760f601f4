"""Seeded batched decoding with a KV cache: the generation loop that sampling runs.

Prompts are left-padded and prefilled once; each prompt's cache is repeated for its rows, every
row draws its uniforms from its own seeded generator (so a row's tokens do not depend on the
batch it sits in), and rows that hit a stop token leave the batch. Everything runs on the
model's device; only the token ids come back.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch

from curator.model.device import model_device


class SamplingConfig(Protocol):
    """What decoding reads of ``curator.model.sampling.SamplingConfig``."""

    temperature: float
    top_p: float
    max_new_tokens: int

    @property
    def greedy(self) -> bool: ...

NUCLEUS_PROBE = 256  # candidates examined before falling back to a full sort


def _nucleus_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Per row, the smallest probability inside the nucleus (the smallest top set with mass >= top_p).

    A top-``NUCLEUS_PROBE`` partial sort settles almost every row; only rows whose nucleus is wider
    pay for a full sort (sorting the whole vocabulary each step was 30% of SmolLM2's decode time).
    """
    probe = min(NUCLEUS_PROBE, probs.shape[-1])
    vals = probs.topk(probe, dim=-1, sorted=True).values
    cum = vals.cumsum(dim=-1)
    wide = cum[:, -1] < top_p
    if bool(wide.any()):
        padded = torch.zeros((probs.shape[0], probs.shape[1]), dtype=probs.dtype, device=probs.device)
        padded[:, :probe] = vals
        padded[wide] = probs[wide].sort(dim=-1, descending=True).values
        vals = padded
        cum = vals.cumsum(dim=-1)
    n_keep = ((cum - vals) < top_p).sum(dim=-1).clamp(min=1)
    return vals.gather(1, (n_keep - 1).unsqueeze(1))


def pick(logits: torch.Tensor, u: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """One token per row: greedy, or nucleus sampling by inverse CDF with the row's own uniform ``u``.

    The CDF runs over the kept tokens in vocabulary order, so the token drawn depends only on the
    row's own logits and uniform (no dependence on sort order among ties or on other rows).
    """
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / config.temperature, dim=-1)
    if config.top_p < 1.0:
        probs = probs.masked_fill(probs < _nucleus_threshold(probs, config.top_p), 0.0)
    cum = probs.cumsum(dim=-1)
    j = torch.searchsorted(cum, (u * cum[:, -1]).unsqueeze(1), right=True).squeeze(1)
    j = j.clamp(max=probs.shape[-1] - 1)
    # a draw landing past the last kept token (float rounding) falls back to the last kept one
    last_kept = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    return torch.minimum(j, last_kept)


def _cache_argument(model: Any) -> str:
    """The name of the KV cache in and out of ``model``'s forward: ``cache`` from transformers 5.24
    (where ``past_key_values`` is deprecated), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def generate_batch(model: Any, prompt_ids: list[list[int]], seeds: list[list[int]], config: SamplingConfig, stop_ids: set[int], pad_id: int) -> list[list[list[int]]]:
    """Generated token ids (stop token excluded) for each prompt and each of its rows.

    ``seeds[i]`` holds one generator seed per row of prompt ``i``. Prompts are left-padded and
    prefilled once; the KV cache is then repeated for the rows, and finished rows leave the batch.
    """
    device = model_device(model)
    n, max_new = len(prompt_ids), config.max_new_tokens
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    reps = torch.tensor([len(s) for s in seeds], device=device)
    cache_arg = _cache_argument(model)
    cache = out[cache_arg]
    if int(reps.max()) > 1:  # one prefill per prompt, shared by its rows
        cache.batch_select_indices(torch.repeat_interleave(torch.arange(n, device=device), reps))
    logits = out.logits[:, -1, :].float().repeat_interleave(reps, dim=0)
    mask = mask.repeat_interleave(reps, dim=0)
    next_pos = pos[:, -1].repeat_interleave(reps, dim=0) + 1
    flat_seeds = [s for row in seeds for s in row]
    uniforms = torch.stack([torch.rand(max_new, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in flat_seeds]).float().to(device)
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    rows = torch.arange(len(flat_seeds), device=device)  # which original row each batch row is
    tokens: list[list[int]] = [[] for _ in flat_seeds]
    for t in range(max_new):
        nxt = pick(logits, uniforms[rows, t], config)
        stopped = torch.isin(nxt, stops)
        for r, tok, s in zip(rows.tolist(), nxt.tolist(), stopped.tolist()):
            if not s:
                tokens[r].append(tok)
        if t == max_new - 1:
            break
        if bool(stopped.any()):
            keep = (~stopped).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            rows, nxt, mask, next_pos = rows[keep], nxt[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=next_pos.unsqueeze(1), use_cache=True, **{cache_arg: cache})
        cache = out[cache_arg]
        logits = out.logits[:, -1, :].float()
        next_pos = next_pos + 1
    result: list[list[list[int]]] = []
    at = 0
    for row in seeds:
        result.append(tokens[at : at + len(row)])
        at += len(row)
    return result
