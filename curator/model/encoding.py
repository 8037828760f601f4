"""Turn (prompt, response) into token ids with a response-only label mask.

The chat template is applied when the tokenizer has one: the prompt is rendered with the
generation prompt, and the response tokens are exactly what the template adds for the assistant
turn (including its end-of-turn marker). Prompt positions get label -100. Over-long pairs are
truncated to ``max_length`` keeping response tokens first: the prompt loses tokens from its
start, and only a response longer than ``max_length`` is itself cut at its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from curator.io.data import Prompt, prompt_text

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    n_prompt: int
    n_response: int
    truncated: bool


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def render(tokenizer: Any, prompt: Prompt, response: str) -> tuple[str, str]:
    """(prompt text, response text) exactly as the model sees them."""
    if getattr(tokenizer, "chat_template", None):
        msgs = _messages(prompt)
        p_text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(p_text):
            return p_text, full[len(p_text) :]
        return p_text, response + (tokenizer.eos_token or "")
    bos = tokenizer.bos_token or ""
    return bos + prompt_text(prompt) + "\n", response + (tokenizer.eos_token or "")


def encode(tokenizer: Any, prompt: Prompt, response: str, max_length: int) -> Encoded:
    """Token ids and response-only labels, truncated to ``max_length`` (response kept first)."""
    p_text, r_text = render(tokenizer, prompt, response)
    p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(r_text, add_special_tokens=False)["input_ids"]
    truncated = len(p_ids) + len(r_ids) > max_length
    if truncated:
        r_ids = r_ids[:max_length]
        keep = max_length - len(r_ids)
        p_ids = p_ids[len(p_ids) - keep :] if keep > 0 else []
    return Encoded(
        input_ids=list(p_ids) + list(r_ids),
        labels=[IGNORE_INDEX] * len(p_ids) + list(r_ids),
        n_prompt=len(p_ids),
        n_response=len(r_ids),
        truncated=truncated,
    )


def right_padded(examples: Sequence[Encoded], pad_id: int, device: Any = None) -> tuple[Any, Any, Any]:
    """Right-padded input ids, labels (IGNORE_INDEX past each end) and attention mask, [B, longest], on ``device``."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[r, :n] = torch.tensor(e.labels, dtype=torch.long)
        mask[r, :n] = 1
    return ids.to(device), labels.to(device), mask.to(device)
