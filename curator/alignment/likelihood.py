"""Likelihood of a candidate response under the target model: the comparison metrics.

- ``perplexity``: exp of the mean negative log-likelihood of the response tokens given the
  prompt, with exactly the tokens and labels that the gradient loss uses
  (:func:`curator.model.encoding.encode`). Range [1, inf); lower is better.
- ``sappl`` (self-aligned perplexity, the paper's v2/v3 comparison metric): the same, with the
  prompt preceded in the chat by n in-context examples of the target model's *own* answers to
  *other* prompts, so that the score measures how close the candidate is to the model's own
  style, not only to its prior. Range [1, inf); lower is better.

Both run in right-padded batches with an attention mask; a padded batch gives the same values as
one example at a time (to float rounding).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from curator.io.data import Message, Prompt
from curator.model.device import model_device
from curator.model.encoding import IGNORE_INDEX, Encoded, encode, right_padded
from curator.errors import InputError

Demo = tuple[Prompt, str]


def _check_args(prompts: Sequence[Prompt], responses: Sequence[str], max_length: int, batch_size: int) -> None:
    if len(prompts) != len(responses):
        raise InputError(f"got {len(prompts)} prompts but {len(responses)} responses: give one response per prompt")
    if max_length < 8:
        raise InputError(f"max_length={max_length} is too small: use at least 8 (--max-length)")
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size} is invalid: use an integer >= 1 (--batch-size)")


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


@torch.no_grad()
def response_nll(loaded: Any, examples: Sequence[Encoded], batch_size: int = 8) -> list[tuple[float, int]]:
    """(mean NLL in nats, number of scored tokens) of each example's response tokens, in order.

    The first token of a sequence has no context, so it is never scored (as in
    :func:`curator.gradients.computer.response_loss`).
    """
    model, pad_id = loaded.model, _pad_id(loaded.tokenizer)
    out: list[tuple[float, int]] = [(math.nan, 0)] * len(examples)
    for i, enc in enumerate(examples):
        if not any(label != IGNORE_INDEX for label in enc.labels[1:]):
            raise InputError(f"example {i} has no response token left to score after truncation: raise --max-length")
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, labels, mask = right_padded([examples[i] for i in idx], pad_id, model_device(model))
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none").view(target.shape)
        scored = target != IGNORE_INDEX
        counts = scored.sum(1)
        means = (nll * scored).sum(1) / counts
        for i, m, c in zip(idx, means.tolist(), counts.tolist()):  # only the scores come back
            out[i] = (float(m), int(c))
    return out


def perplexity(loaded: Any, prompts: Sequence[Prompt], responses: Sequence[str], max_length: int = 512, batch_size: int = 8) -> list[float]:
    """Perplexity of each response given its prompt, over response tokens only. Range [1, inf); lower is better."""
    _check_args(prompts, responses, max_length, batch_size)
    examples = [encode(loaded.tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    return [math.exp(nll) for nll, _ in response_nll(loaded, examples, batch_size)]


def _split_system(prompt: Prompt) -> tuple[list[Message], list[Message]]:
    """(leading system messages, the rest) of a prompt, as chat messages."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    k = 0
    while k < len(msgs) and msgs[k]["role"] == "system":
        k += 1
    return msgs[:k], msgs[k:]


def demo_chat(prompt: Prompt, demos: Sequence[Demo]) -> Prompt:
    """The chat that puts ``demos`` (prompt, model answer) before ``prompt``.

    The prompt's own leading system messages stay first; the demos' system messages are dropped
    (one conversation has one system prompt). With no demo the prompt is returned unchanged, so
    the self-aligned perplexity with no demo is exactly the perplexity.
    """
    if not demos:
        return prompt
    system, own = _split_system(prompt)
    chat: list[Message] = list(system)
    for demo_prompt, answer in demos:
        chat.extend(_split_system(demo_prompt)[1])
        chat.append({"role": "assistant", "content": answer})
    return chat + own


def pick_demos(prompt: Prompt, demos: Sequence[Demo], n_demos: int) -> list[Demo]:
    """The first ``n_demos`` demos, in the given order, whose prompt differs from ``prompt`` and whose answer is not empty."""
    picked: list[Demo] = []
    for demo_prompt, answer in demos:
        if len(picked) >= n_demos:
            break
        if demo_prompt != prompt and isinstance(answer, str) and answer.strip():
            picked.append((demo_prompt, answer))  # type: ignore[arg-type]
    return picked


def encode_with_demos(tokenizer: Any, prompt: Prompt, response: str, demos: Sequence[Demo], max_length: int) -> Encoded:
    """Tokens and labels of the demo chat; truncation keeps the response, then the own prompt, then as many demos as fit.

    Demos drop from the end of the list when the whole chat does not fit.
    """
    for k in range(len(demos), 0, -1):
        enc = encode(tokenizer, demo_chat(prompt, demos[:k]), response, max_length)
        if not enc.truncated:
            return enc
    return encode(tokenizer, prompt, response, max_length)


def self_aligned_perplexity(
    loaded: Any,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    demos: Sequence[Demo],
    n_demos: int = 2,
    max_length: int = 512,
    batch_size: int = 8,
) -> list[float]:
    """Perplexity of each response when its prompt follows n demos of the target model's own answers.

    ``demos`` are (prompt, target-model sample) pairs. For candidate i the first ``n_demos`` demos
    whose prompt differs from prompt i are used, in order (deterministic; the own prompt is never
    a demo). Range [1, inf); lower is better.
    """
    _check_args(prompts, responses, max_length, batch_size)
    if n_demos < 0:
        raise InputError(f"n_demos={n_demos} is invalid: use an integer >= 0")
    for j, demo in enumerate(demos):
        if not (isinstance(demo, (tuple, list)) and len(demo) == 2 and isinstance(demo[1], str)):
            raise InputError(f"demos[{j}] must be a (prompt, model sample) pair: pass a list of 2-tuples")
    examples = [encode_with_demos(loaded.tokenizer, p, r, pick_demos(p, demos, n_demos), max_length) for p, r in zip(prompts, responses)]
    return [math.exp(nll) for nll, _ in response_nll(loaded, examples, batch_size)]
