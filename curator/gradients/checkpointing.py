"""Gradient checkpointing for the per-example gradient pass (``--gradient-checkpointing``).

transformers checkpoints its decoder layers only in training mode, and curator takes gradients
in eval mode (no dropout). ``checkpointed_layers`` wraps each decoder layer's ``forward`` in
torch's non-reentrant checkpoint for the length of one block instead: the layer keeps none of its
activations, and its forward runs again when the backward reaches it. Peak memory then grows
with one layer's activations, not with every layer's, so long sequences fit.

Recomputation stops early by default once the tensors the backward needs are back, which could
skip the forward hook of a layer's last LoRA Linear; it is switched off here, so every hook sees
its recomputed input (``curator.gradients.hooks``).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any, Iterator

import torch
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from curator.errors import InputError


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's decoder layers: transformers' ``GradientCheckpointingLayer`` modules."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def modules_inside(layers: list[torch.nn.Module]) -> frozenset[int]:
    """ids of every module within ``layers`` (the ones whose forward is replayed)."""
    return frozenset(id(m) for layer in layers for m in layer.modules())


def _replayed_forward(layer: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = type(layer).forward.__get__(layer)
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


@contextmanager
def checkpointed_layers(model: Any) -> Iterator[list[torch.nn.Module]]:
    """Checkpoint every decoder layer of ``model`` inside the block (forward and backward alike)."""
    layers = decoder_layers(model)
    if not layers:
        name = type(getattr(model, "get_base_model", lambda: model)()).__name__
        raise InputError(f"--gradient-checkpointing: {name} has no checkpointable decoder layers: leave the option out for this model")
    with ExitStack() as stack:
        stack.enter_context(set_checkpoint_early_stop(False))
        for layer in layers:
            layer.forward = partial(_replayed_forward, layer)  # type: ignore[method-assign]
            stack.callback(delattr, layer, "forward")
        yield layers
