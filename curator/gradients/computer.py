"""Per-example LoRA gradients of the response-only loss.

The gradient is taken with respect to the LoRA parameters only (peft ``LoraConfig``, seeded
init, no dropout), of the mean cross-entropy over response tokens. Two kinds:

- ``sgd``: the raw gradient g;
- ``adam``: the LESS preconditioned form m'/(sqrt(v')+eps) with m' = b1*m + (1-b1)*g and
  v' = b2*v + (1-b2)*g², from the Adam moments (m, v) saved in a warm-up checkpoint.

``reference_gradients`` is the plain, exact per-example loop (batch size 1, one backward per
example). It is the oracle that the batched path (``curator.gradients.fastgrad``, used by ``gradients``)
must match.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from curator.config import LoraSettings
from curator.model.encoding import IGNORE_INDEX, Encoded
from curator.errors import InputError, MismatchError
from curator.gradients.fastgrad import Backoff, per_example_gradients
from curator.model.device import model_device

OPTIMIZER_FILE = "optimizer.safetensors"
CHECKPOINT_FILE = "checkpoint.json"


@dataclass(frozen=True)
class Checkpoint:
    """A warm-up checkpoint: LoRA weights, Adam moments and the learning rate at that point."""

    path: str
    lr: float
    step: int
    betas: tuple[float, float]
    fingerprint: str
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]


def attach_lora(model: Any, lora: LoraSettings) -> Any:
    """Wrap ``model`` with a seeded LoRA adapter; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        target_modules=list(lora.target_modules),
        lora_dropout=lora.dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(lora.seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, config)
    finally:
        torch.random.set_rng_state(state)
    peft_model.eval()
    return peft_model


def lora_parameters(peft_model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable LoRA parameters in a fixed (name-sorted) order; this order defines the gradient layout."""
    return sorted(((n, p) for n, p in peft_model.named_parameters() if p.requires_grad), key=lambda x: x[0])


def load_checkpoint(peft_model: Any, path: str | Path, lora: LoraSettings, model_fingerprint: str | None = None) -> Checkpoint:
    """Load a ``curator warmup`` checkpoint's LoRA weights into ``peft_model`` and read its Adam state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ckpt = Path(path)
    meta_file = ckpt / CHECKPOINT_FILE
    if not meta_file.exists():
        raise InputError(f"{ckpt}: not a curator warm-up checkpoint (no {CHECKPOINT_FILE}): pass a checkpoint-N folder made by `curator warmup`")
    meta = json.loads(meta_file.read_text())
    saved_fp = meta.get("model", {}).get("fingerprint")
    if model_fingerprint is not None and saved_fp != model_fingerprint:
        raise MismatchError(f"{ckpt}: checkpoint was trained on model fingerprint {saved_fp} but this run loads {model_fingerprint}: use the --model the warm-up used")
    saved = LoraSettings.from_dict(meta["lora"])
    for field in ("r", "alpha", "target_modules"):
        if getattr(saved, field) != getattr(lora, field):
            raise MismatchError(f"{ckpt}: checkpoint LoRA {field}={getattr(saved, field)!r} but this run uses {getattr(lora, field)!r}: use the checkpoint's LoRA settings")
    set_peft_model_state_dict(peft_model, load_file(str(ckpt / "adapter_model.safetensors")))
    opt = load_file(str(ckpt / OPTIMIZER_FILE))
    exp_avg = {k[len("exp_avg/") :]: v for k, v in opt.items() if k.startswith("exp_avg/")}
    exp_avg_sq = {k[len("exp_avg_sq/") :]: v for k, v in opt.items() if k.startswith("exp_avg_sq/")}
    names = [n for n, _ in lora_parameters(peft_model)]
    missing = [n for n in names if n not in exp_avg or n not in exp_avg_sq]
    if missing:
        raise InputError(f"{ckpt / OPTIMIZER_FILE}: no Adam moments for {missing[0]} (and {len(missing) - 1} more): the checkpoint was made for another model or LoRA layout")
    return Checkpoint(str(ckpt), float(meta["lr"]), int(meta["step"]), tuple(meta["betas"]), meta["fingerprint"], exp_avg, exp_avg_sq)  # type: ignore[arg-type]


def response_loss(model: Any, enc: Encoded) -> torch.Tensor:
    """Mean next-token cross-entropy over the response tokens of one example."""
    device = model_device(model)
    ids = torch.tensor([enc.input_ids], dtype=torch.long, device=device)
    labels = torch.tensor(enc.labels[1:], dtype=torch.long, device=device)
    if not bool((labels != IGNORE_INDEX).any()):
        raise InputError("an example has no response token left to score after truncation: raise --max-length")
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="mean")


def adam_precondition(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, betas: tuple[float, float], eps: float) -> torch.Tensor:
    """LESS's Adam direction m'/(sqrt(v')+eps) after one more step with gradient g."""
    b1, b2 = betas
    m_new = b1 * m + (1.0 - b1) * g
    v_new = b2 * v + (1.0 - b2) * g * g
    return m_new / (torch.sqrt(v_new) + eps)


class GradientComputer:
    """Per-example gradients of one model + LoRA adapter (+ optional checkpoint), flattened in a fixed order."""

    def __init__(self, model: Any, lora: LoraSettings, checkpoint: str | Path | None = None, adam_eps: float = 1e-8, model_fingerprint: str | None = None) -> None:
        self.model = attach_lora(model, lora)
        self.checkpoint = load_checkpoint(self.model, checkpoint, lora, model_fingerprint) if checkpoint else None
        self.params = lora_parameters(self.model)
        self.n_params = sum(p.numel() for _, p in self.params)
        self.adam_eps = adam_eps
        self.device = model_device(self.model)
        self.backoff = Backoff()  # out-of-memory back-off, kept across the batches of one run
        if self.checkpoint is not None:
            self._m = torch.cat([self.checkpoint.exp_avg[n].reshape(-1).float() for n, _ in self.params]).to(self.device)
            self._v = torch.cat([self.checkpoint.exp_avg_sq[n].reshape(-1).float() for n, _ in self.params]).to(self.device)

    def reference_gradients(self, examples: list[Encoded]) -> torch.Tensor:
        """Exact per-example raw gradients, [n, n_params] on the model's device, one backward per example."""
        out = torch.empty(len(examples), self.n_params, dtype=torch.float32, device=self.device)
        tensors = [p for _, p in self.params]
        for i, enc in enumerate(examples):
            loss = response_loss(self.model, enc)
            grads = torch.autograd.grad(loss, tensors)
            out[i] = torch.cat([g.reshape(-1) for g in grads])
        return out

    def gradients(self, examples: list[Encoded], kind: str = "sgd", dtype: str = "fp32", tokens_per_batch: int | None = None, attention: str = "auto", gradient_checkpointing: bool = False) -> torch.Tensor:
        """Per-example gradients of the given kind (``sgd`` or ``adam``), [n, n_params] float32 on the model's device.

        ``dtype="bf16"`` runs the forward in bf16 (weights already in bf16 on a GPU, autocast on the
        CPU); ``tokens_per_batch`` caps the tokens of one batched backward (examples are bucketed by
        length); ``attention`` picks the packed batches' kernel; ``gradient_checkpointing``
        recomputes each layer in the backward. A device OOM halves the batch and retries.
        """
        raw = per_example_gradients(self.model, self.params, examples, tokens_per_batch=tokens_per_batch, dtype=dtype, attention=attention, gradient_checkpointing=gradient_checkpointing, backoff=self.backoff)  # batched; reference_gradients stays the oracle
        if kind == "sgd":
            return raw
        if kind == "adam":
            if self.checkpoint is None:
                raise InputError("gradient kind 'adam' needs a warm-up checkpoint: pass --checkpoint DIR (made by `curator warmup`)")
            return adam_precondition(raw, self._m, self._v, self.checkpoint.betas, self.adam_eps)
        raise InputError(f"gradient kind {kind!r} is unknown: use sgd or adam")
