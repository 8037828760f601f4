"""Where the model runs and in which precision: the one place that decides it.

``resolve(DeviceConfig)`` turns the user's choice (``--device``, ``$CURATOR_DEVICE``, ``--dtype``,
``--attn-implementation``) into a ``Placement``: a concrete ``torch.device``, a compute dtype and
an attention implementation. Every model step reads its device from the model it is given
(``model_device``), so tensors are made where the weights are and only results come back.

- ``auto`` device: CUDA when present, then Apple's MPS, then the CPU.
- ``auto`` dtype: bf16 on a GPU that supports it, fp32 otherwise. On a GPU the weights load in
  the compute dtype (an 8B model fits in 16 GB); on the CPU they stay fp32 and bf16 runs under
  autocast. Per-example gradients always accumulate in fp32.
- Out of memory: ``is_out_of_memory`` recognises a device OOM, so a caller can halve its batch
  and retry (``curator.gradients.fastgrad``, ``curator.model.sampling``).
"""

from __future__ import annotations

import os
import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager

import torch

from curator.config import DEVICE_ENV, DeviceConfig
from curator.errors import InputError

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"(auto|cpu|mps|cuda)(:\d+)?")


@dataclass(frozen=True)
class Placement:
    """A resolved device, compute dtype (fp32, bf16 or fp16) and attention implementation."""

    device: torch.device
    dtype: str = "fp32"
    attn_implementation: str = "auto"

    @property
    def weights_dtype(self) -> torch.dtype:
        """fp32 on the CPU (bf16 runs under autocast there); the compute dtype on a GPU."""
        return torch.float32 if self.device.type == "cpu" else TORCH_DTYPES[self.dtype]

    def autocast(self) -> ContextManager[Any]:
        """Autocast to the compute dtype where the weights are wider than it (the CPU), else nothing."""
        if self.dtype == "fp32" or self.weights_dtype == TORCH_DTYPES[self.dtype]:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=TORCH_DTYPES[self.dtype])

    def describe(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return f"{name}, {self.dtype}"


CPU = Placement(torch.device("cpu"))


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _rank_gpu() -> int:
    """The GPU of this process: ``LOCAL_RANK`` (set by torchrun) modulo the GPUs here, else the current one.

    Each rank of a torchrun job takes its own GPU; with more ranks than GPUs they share them in turn.
    """
    local = os.environ.get("LOCAL_RANK")
    if local is not None and local.isdigit():
        return int(local) % torch.cuda.device_count()
    return torch.cuda.current_device()


def resolve_device(spec: str | None = None) -> torch.device:
    """``auto|cpu|cuda|cuda:N|mps`` (None: ``$CURATOR_DEVICE``, else auto) to a device that exists here."""
    source = "--device"
    if spec is None or spec == "":
        spec = os.environ.get(DEVICE_ENV) or "auto"
        source = DEVICE_ENV if os.environ.get(DEVICE_ENV) else "--device"
    text = spec.strip().lower()
    m = _DEVICE.fullmatch(text)
    if m is None or (m.group(2) and m.group(1) != "cuda"):
        raise InputError(f"{source} {spec!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    kind = m.group(1)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _rank_gpu())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise InputError(f"{source} {spec}: no CUDA device is available here (torch {torch.__version__}, {build}): use --device cpu or auto")
        index = int(m.group(2)[1:]) if m.group(2) else _rank_gpu()
        if index >= torch.cuda.device_count():
            raise InputError(f"{source} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0: pick one of them")
        return torch.device("cuda", index)
    if kind == "mps" and not _mps_available():
        raise InputError(f"{source} {spec}: Apple's MPS is not available here: use --device cpu or auto")
    return torch.device(kind)


def resolve_dtype(spec: str, device: torch.device) -> str:
    """``auto|fp32|bf16|fp16`` on ``device`` to a concrete compute dtype it supports."""
    if spec not in ("auto", *TORCH_DTYPES):
        raise InputError(f"--dtype {spec!r} is unknown: use auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if spec == "auto":
            return "bf16" if bf16 else "fp32"
        if spec == "bf16" and not bf16:
            raise InputError(f"--dtype bf16: {torch.cuda.get_device_name(device)} does not support bf16: use fp16 or fp32")
        return spec
    if spec == "fp16" and device.type == "cpu":
        raise InputError("--dtype fp16 runs on a GPU only: use bf16 or fp32 on the CPU")
    return "fp32" if spec == "auto" else spec


def resolve(config: DeviceConfig | None = None) -> Placement:
    """The placement a ``DeviceConfig`` asks for, checked against this machine."""
    config = config or DeviceConfig()
    device = resolve_device(config.device)
    return Placement(device, resolve_dtype(config.dtype, device), config.attn_implementation)


def model_device(model: Any) -> torch.device:
    """The device of a model's first parameter (where its inputs must be made)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA or MPS), which a smaller batch may avoid."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "MPS" in str(exc)


def release_cached_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back after an OOM, so the retry starts clean."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
