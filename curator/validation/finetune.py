"""LoRA fine-tuning on one strategy's candidates, and evaluation on the eval set.

This is the ground truth that `curator validate` holds the predictions against. Every strategy
gets the same budget: the same number of examples (a seeded sample of the strategy's
candidates), optimizer steps, batch size, learning rate, LoRA settings and seed.

Training is a plain loop with peft LoRA and AdamW (linear warm-up, then linear decay to zero).
The loss is the response-only mean cross-entropy of each example (prompt tokens are masked, as
in ``curator.model.encoding``), averaged over the batch; batches are right-padded with an attention
mask. Evaluation measures, on the eval set:

- ``loss``: the mean over eval items of each item's mean response-token NLL (nats), with exactly
  the tokens and labels that the gradients use; lower is better;
- ``accuracy``: greedy generation, then the final answer (``curator.alignment.similarity.extract_answer``)
  compared with the reference's. Only items whose reference has an extractable answer count.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from curator.alignment.similarity import extract_answer
from curator.config import LoraSettings, ProgressFn, is_int, no_progress
from curator.io.data import Candidate, EvalItem
from curator.model.device import model_device
from curator.model.encoding import IGNORE_INDEX, Encoded, encode, right_padded
from curator.errors import InputError
from curator.gradients.computer import attach_lora, lora_parameters
from curator.alignment.likelihood import response_nll
from curator.model.models import LoadedModel
from curator.model.sampling import SamplingConfig, sample_outputs


@dataclass(frozen=True)
class FinetuneConfig:
    """The training budget, identical for every strategy. ``examples=None``: the smallest strategy's count."""

    steps: int = 32
    lr: float = 5e-4
    batch_size: int = 4
    examples: int | None = None
    max_length: int = 512
    warmup_ratio: float = 0.1
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if not is_int(self.steps) or self.steps < 1:
            raise InputError(f"--steps {self.steps!r} is invalid: use an integer >= 1")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0 or not math.isfinite(self.lr):
            raise InputError(f"--lr {self.lr!r} is invalid: use a positive learning rate, e.g. 2e-4")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size!r} is invalid: use an integer >= 1")
        if self.examples is not None and (not is_int(self.examples) or self.examples < 1):
            raise InputError(f"--examples {self.examples!r} is invalid: use an integer >= 1, or leave it out to use the smallest strategy's count")
        if not is_int(self.max_length) or self.max_length < 8:
            raise InputError(f"--max-length {self.max_length!r} is too small: use at least 8")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise InputError(f"warmup_ratio={self.warmup_ratio!r} is invalid: use 0 <= warmup_ratio < 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = self.lora.to_dict()
        d["lr"] = float(self.lr)
        return d


@dataclass(frozen=True)
class EvalConfig:
    """How the eval set is measured. ``accuracy=False`` skips generation (loss only)."""

    accuracy: bool = True
    max_new_tokens: int = 128
    max_length: int = 512
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens {self.max_new_tokens!r} is invalid: use an integer >= 1")
        if not is_int(self.max_length) or self.max_length < 8:
            raise InputError(f"--max-length {self.max_length!r} is too small: use at least 8")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise InputError(f"eval batch_size={self.batch_size!r} is invalid: use an integer >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_examples(cands: Sequence[Candidate], n: int, seed: int) -> list[Candidate]:
    """A seeded sample of ``n`` candidates (all of them, shuffled, when there are exactly ``n``)."""
    if n > len(cands):
        raise InputError(f"asked for {n} training examples but strategy {cands[0].strategy!r} has {len(cands)}: lower --examples to at most {len(cands)}")
    return random.Random(seed).sample(list(cands), n)


def batch_loss(model: Any, batch: Sequence[Encoded], pad_id: int) -> torch.Tensor:
    """Mean over the batch of each example's mean response-token cross-entropy (right-padded)."""
    ids, labels, mask = right_padded(batch, pad_id, model_device(model))
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    target = labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none").view(target.shape)
    scored = target != IGNORE_INDEX
    return ((nll * scored).sum(1) / scored.sum(1).clamp(min=1)).mean()


def _encode_all(loaded: LoadedModel, rows: Sequence[Candidate | EvalItem], max_length: int, what: str) -> list[Encoded]:
    out = []
    for r in rows:
        enc = encode(loaded.tokenizer, r.prompt, r.response, max_length)
        if not any(label != IGNORE_INDEX for label in enc.labels[1:]):
            raise InputError(f"{what} {r.id!r}: no response token left to score after truncation: raise --max-length")
        out.append(enc)
    return out


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def train_lora(base: LoadedModel, examples: Sequence[Candidate], config: FinetuneConfig, seed: int, progress: ProgressFn = no_progress, stage: str = "train") -> tuple[Any, dict[str, Any]]:
    """Fine-tune a fresh LoRA adapter (initialised with ``seed``) on a copy of ``base``.

    Batches walk through the examples in a seeded order, reshuffled each pass, for exactly
    ``config.steps`` optimizer steps. ``base`` is left untouched. Returns (the peft model, stats).
    """
    start = time.perf_counter()
    encoded = _encode_all(base, examples, config.max_length, "candidate")
    model = copy.deepcopy(base.model)
    peft_model = attach_lora(model, replace(config.lora, seed=seed))
    params = [p for _, p in lora_parameters(peft_model)]
    opt = torch.optim.AdamW(params, lr=float(config.lr), weight_decay=0.0)
    warm = max(1, round(config.warmup_ratio * config.steps)) if config.warmup_ratio > 0 else 0
    total = config.steps

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return max(0.0, (total - s) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    rng = random.Random(seed)
    order: list[int] = []
    pad = _pad_id(base.tokenizer)
    losses: list[float] = []
    peft_model.train()
    torch.manual_seed(seed)
    progress(stage, 0, total)
    for step in range(total):
        batch = []
        while len(batch) < config.batch_size:
            if not order:
                order = list(range(len(encoded)))
                rng.shuffle(order)
            batch.append(encoded[order.pop()])
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(peft_model, batch, pad)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        progress(stage, step + 1, total)
    peft_model.eval()
    stats = {
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "train_losses": losses,
        "examples_seen": total * config.batch_size,
        "epochs": total * config.batch_size / len(encoded),
        "train_seconds": time.perf_counter() - start,
    }
    return peft_model, stats


def evaluate(loaded: LoadedModel, evals: Sequence[EvalItem], config: EvalConfig, progress: ProgressFn = no_progress, stage: str = "evaluate") -> dict[str, Any]:
    """Eval loss (mean per-item response NLL) and, where answers are extractable, greedy accuracy.

    ``loaded.model`` may carry a LoRA adapter (peft injects it in place), which is then evaluated.
    """
    start = time.perf_counter()
    model = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    target = LoadedModel(loaded.spec, model, loaded.tokenizer, loaded.fingerprint, loaded.placement)
    was_training = model.training
    model.eval()
    progress(stage, 0, 2)
    try:
        encoded = _encode_all(target, evals, config.max_length, "eval item")
        nll = response_nll(target, encoded, config.batch_size)
        progress(stage, 1, 2)
        items: list[dict[str, Any]] = [{"id": e.id, "task": e.task, "loss": float(n), "tokens": int(c)} for e, (n, c) in zip(evals, nll)]
        refs = {e.id: extract_answer(e.response) for e in evals}
        gradable = [e for e in evals if refs[e.id] is not None]
        accuracy = None
        if config.accuracy and gradable:
            greedy = SamplingConfig(k=1, temperature=0.0, max_new_tokens=config.max_new_tokens, seed=0, batch_size=config.batch_size)
            outputs = sample_outputs(target, {e.id: e.prompt for e in gradable}, greedy)
            hits = 0
            for item in items:
                if item["id"] not in outputs:
                    continue
                text = outputs[item["id"]][0]
                predicted = extract_answer(text)
                item.update(reference_answer=refs[item["id"]], answer=predicted, correct=predicted == refs[item["id"]], output=text)
                hits += int(item["correct"])
            accuracy = hits / len(gradable)
        progress(stage, 2, 2)
    finally:
        model.train(was_training)
    losses = np.array([i["loss"] for i in items])
    tokens = np.array([i["tokens"] for i in items])
    by_task: dict[str, float] = {}
    for task in sorted({e.task for e in evals}):
        by_task[task] = float(np.mean([i["loss"] for i in items if i["task"] == task]))
    return {
        "loss": float(losses.mean()),
        "token_loss": float((losses * tokens).sum() / tokens.sum()),
        "loss_by_task": by_task,
        "accuracy": accuracy,
        "n_gradable": len(gradable) if config.accuracy else 0,
        "n_eval": len(evals),
        "items": items,
        "eval_seconds": time.perf_counter() - start,
    }
