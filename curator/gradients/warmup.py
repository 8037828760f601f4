"""`curator warmup`: a brief LoRA warm-up that saves checkpoints with their Adam state (LESS).

It trains the LoRA adapter on a seeded random fraction of the data for a few epochs with AdamW
and a linear schedule (warm-up then decay), and saves one checkpoint per epoch:

    OUT/checkpoint-<epoch>/adapter_model.safetensors, adapter_config.json  (a standard peft adapter)
    OUT/checkpoint-<epoch>/optimizer.safetensors   Adam moments exp_avg/<param>, exp_avg_sq/<param>
    OUT/checkpoint-<epoch>/checkpoint.json         lr (mean over the epoch), step, betas, fingerprints

The ``adam`` gradient kind and multi-checkpoint influence read these.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from curator.io.atomic import write_dir_atomic, write_json_atomic
from curator.config import DeviceConfig, LoraSettings, ProgressFn, no_progress
from curator.model.encoding import encode
from curator.errors import InputError
from curator.gradients.computer import CHECKPOINT_FILE, OPTIMIZER_FILE, attach_lora, lora_parameters, response_loss
from curator.io.data import load_rows
from curator.model.models import LoadedModel, load_model
from curator.gradients.checkpointing import checkpointed_layers


@dataclass(frozen=True)
class WarmupConfig:
    fraction: float = 0.05
    min_examples: int = 8
    epochs: int = 4
    lr: float = 2e-5
    batch_size: int = 8
    warmup_ratio: float = 0.03
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_length: int = 512
    seed: int = 0
    gradient_checkpointing: bool = False  # recompute each decoder layer in the backward: long sequences fit

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise InputError(f"--fraction {self.fraction} is invalid: use 0 < fraction <= 1")
        if self.epochs < 1:
            raise InputError(f"--epochs {self.epochs} is invalid: use an integer >= 1")
        if self.lr <= 0:
            raise InputError(f"--lr {self.lr} is invalid: use a positive learning rate")
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size} is invalid: use an integer >= 1")


def adapter_fingerprint(params: list[tuple[str, torch.nn.Parameter]]) -> str:
    """sha256 of the LoRA weights in name order."""
    h = hashlib.sha256()
    for name, p in params:
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _save_checkpoint(out: Path, epoch: int, peft_model: object, opt: torch.optim.Optimizer, params: list, meta: dict) -> Path:
    from safetensors.torch import save_file

    target = out / f"checkpoint-{epoch}"

    def fill(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp))  # type: ignore[attr-defined]
        tensors: dict[str, torch.Tensor] = {}
        for name, p in params:
            state = opt.state[p]
            tensors[f"exp_avg/{name}"] = state["exp_avg"].detach().cpu().contiguous()
            tensors[f"exp_avg_sq/{name}"] = state["exp_avg_sq"].detach().cpu().contiguous()
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        write_json_atomic(tmp / CHECKPOINT_FILE, {**meta, "fingerprint": adapter_fingerprint(params)})

    write_dir_atomic(target, fill)
    return target


def warmup(data: str | Path, out: str | Path, model: str = "smollm2-135m", lora: LoraSettings | None = None, config: WarmupConfig | None = None, progress: ProgressFn = no_progress, loaded: LoadedModel | None = None, device: DeviceConfig | None = None) -> list[Path]:
    """Train LoRA briefly on a fraction of ``data``; returns the saved checkpoint-N folders, in step order.

    ``device`` places the model (``curator.model.device``; None: $CURATOR_DEVICE or auto)."""
    lora = lora or LoraSettings()
    config = config or WarmupConfig()
    _, rows = load_rows(data)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    n = min(len(rows), max(config.min_examples, math.ceil(config.fraction * len(rows))))
    chosen = rng.sample(list(rows), n)
    loaded = loaded or load_model(model, device)
    examples = [encode(loaded.tokenizer, r.prompt, r.response, config.max_length) for r in chosen]
    torch.manual_seed(config.seed)
    peft_model = attach_lora(loaded.model, lora)
    params = lora_parameters(peft_model)
    opt = torch.optim.AdamW([p for _, p in params], lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=0.0)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    warm = max(1, round(config.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    step = 0
    saved: list[Path] = []
    peft_model.train()
    with ExitStack() as stack:
        if config.gradient_checkpointing:  # recompute each decoder layer in the backward (in train mode too)
            stack.enter_context(checkpointed_layers(peft_model))
        for epoch in range(1, config.epochs + 1):
            order = list(range(n))
            rng.shuffle(order)
            lrs: list[float] = []
            for lo in range(0, n, config.batch_size):
                batch = [examples[i] for i in order[lo : lo + config.batch_size]]
                opt.zero_grad(set_to_none=True)
                for enc in batch:
                    (response_loss(peft_model, enc) / len(batch)).backward()
                lrs.append(float(sched.get_last_lr()[0]))
                opt.step()
                sched.step()
                step += 1
                progress("warmup", step, total)
            meta = {
                "epoch": epoch,
                "step": step,
                "lr": float(np.mean(lrs)),
                "lr_end": float(sched.get_last_lr()[0]),
                "betas": list(config.betas),
                "eps": config.eps,
                "lora": lora.to_dict(),
                "model": {"spec": loaded.spec, "fingerprint": loaded.fingerprint},
                "warmup": {**asdict(config), "betas": list(config.betas), "n_examples": n, "data": str(data)},
            }
            saved.append(_save_checkpoint(out_dir, epoch, peft_model, opt, params, meta))
    peft_model.eval()
    write_json_atomic(out_dir / "warmup.json", {"checkpoints": [p.name for p in saved], "config": json.loads(json.dumps(asdict(config)))})
    return saved
