"""Hooks on the trainable LoRA Linears that write each example's gradient into its own row.

For a linear layer y = x Wᵀ, dL/dW = Σ_b Σ_t g[b,t]ᵀ x[b,t] with g = dL/dy: a forward hook keeps
the layer input x, a tensor hook on the output receives g in the backward, and the pair is
accumulated per example (padded batch: a masked ``bmm``; packed batch: a sum per segment).

**Gradient checkpointing.** A checkpointed decoder layer (``curator.gradients.checkpointing``)
keeps none of its activations: its forward runs again in the backward, and so do these hooks.
For a Linear inside such a layer the first forward keeps nothing: it only hooks the output. The
replay (``replaying``, set when the backward starts) hands over the recomputed x. The two halves
meet in ``_meet`` whichever arrives first, since a layer's output gradient may be ready before
the replay has run; each pair is accumulated exactly once.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

# (name, parameter) pairs in gradient-layout order, as ``lora_parameters`` gives them
Params = Sequence[tuple[str, torch.nn.Parameter]]


class GradientHooks:
    """Forward hooks on the trainable LoRA Linears of ``model``; per-example gradients land in ``self.out``."""

    def __init__(self, model: Any, params: Params, checkpointed: frozenset[int] = frozenset()) -> None:
        slots: dict[int, tuple[int, torch.Size]] = {}
        off = 0
        for _, p in params:
            slots[id(p)] = (off, p.shape)
            off += p.numel()
        self.n_params = off
        self.out: torch.Tensor | None = None  # [B, n_params] for the batch in flight
        self.mask: torch.Tensor | None = None  # padded batch: [B, T, 1] float, 1 on real tokens
        self.segments: list[tuple[int, int]] | None = None  # packed batch: example b is row positions [s, e)
        self.gather: torch.Tensor | None = None  # packed batch, by matmul: [B, longest] row positions, -1 past each end
        self.roots: list[torch.Tensor] = []  # outputs the backward must reach
        self.replaying = False  # True once the backward started: a forward now is a checkpoint's recompute
        self._root_ids: set[int] = set()
        self._pending: dict[int, dict[str, torch.Tensor]] = {}
        self._handles: list[Any] = []
        found: set[int] = set()
        for _, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and id(module.weight) in slots:
                if module.bias is not None and module.bias.requires_grad:
                    raise NotImplementedError("fast per-example gradients cover LoRA weights only, not trainable biases")
                found.add(id(module.weight))
                hook = self._forward_hook(*slots[id(module.weight)], replayed=id(module) in checkpointed)
                self._handles.append(module.register_forward_hook(hook))
        missing = [n for n, p in params if id(p) not in found]
        if missing:
            self.remove()
            raise NotImplementedError(f"trainable parameter {missing[0]} is not a Linear weight: fast per-example gradients do not cover it")

    def _forward_hook(self, off: int, shape: torch.Size, replayed: bool) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self.out is None:
                return
            x = inputs[0]
            if self.replaying:  # a checkpointed layer recomputed in the backward: hand x over
                if replayed:
                    self._meet(id(module), off, shape, x=x.detach())
                return
            if not output.requires_grad:
                return
            if replayed:  # keep nothing now: x comes back with the replay
                key = id(module)
                output.register_hook(lambda g: self._meet(key, off, shape, g=g))
            else:
                holder = [x]
                output.register_hook(lambda g: self._accumulate(off, shape, holder.pop(), g))
            # lora_B consumes lora_A's output directly: reaching lora_A's output in the backward
            # already runs lora_B's hook, so an output whose input is a root is not a root itself.
            # (Roots stay referenced in self.roots, so their ids cannot be reused meanwhile.)
            if id(x) not in self._root_ids:
                self.roots.append(output)
                self._root_ids.add(id(output))

        return hook

    def _meet(self, key: int, off: int, shape: torch.Size, **half: torch.Tensor) -> None:
        """Pair a replayed input with its output gradient, whichever comes first; accumulate once."""
        slot = self._pending.setdefault(key, {})
        slot.update(half)
        if "x" in slot and "g" in slot:
            del self._pending[key]
            self._accumulate(off, shape, slot["x"], slot["g"])

    def _accumulate(self, off: int, shape: torch.Size, x: torch.Tensor, g: torch.Tensor) -> None:
        """out[b, W slice] += Σ_t g[b,t]ᵀ x[b,t], in float32 whatever the autocast dtype."""
        out, mask, segments = self.out, self.mask, self.segments
        if out is None or (mask is None and segments is None):
            return
        b = out.shape[0]
        k = shape[0] * shape[1]
        with torch.autocast(out.device.type, enabled=False):
            if segments is not None:  # packed: one row, example b owns positions [s, e)
                x = x.reshape(-1, x.shape[-1]).float()
                g = g.reshape(-1, g.shape[-1]).float()
                if self.gather is None:  # one small product per example (the CPU's fastest)
                    for i, (s, e) in enumerate(segments):
                        out[i, off : off + k].view(shape[0], shape[1]).addmm_(g[s:e].t(), x[s:e])
                    return
                # one batched product (a GPU's fastest): gather each segment into a zero-padded row
                x = _gather_rows(x, self.gather)
                g = _gather_rows(g, self.gather)
            else:
                assert mask is not None
                x = x.reshape(b, -1, x.shape[-1]).float()
                g = g.reshape(b, -1, g.shape[-1]).float()
                # mask the narrower side (r columns): padded positions must add nothing
                if g.shape[-1] <= x.shape[-1]:
                    g = g * mask
                else:
                    x = x * mask
            out[:, off : off + k].view(b, shape[0], shape[1]).add_(torch.bmm(g.transpose(1, 2), x))

    def reset(self) -> None:
        self.out, self.mask, self.segments, self.gather, self.roots = None, None, None, None, []
        self.replaying = False
        self._root_ids = set()
        self._pending = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.reset()


def _gather_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[L, d] rows at ``index`` [B, T] (-1: a zero row) → [B, T, d]."""
    padded = torch.cat([t, t.new_zeros(1, t.shape[1])])  # row L is the zero row
    return padded[index.where(index >= 0, t.shape[0])]


def segment_gather_index(segments: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """[B, longest] packed-row positions of each example's tokens, -1 past its end."""
    longest = max(e - s for s, e in segments)
    starts = torch.tensor([s for s, _ in segments], device=device)[:, None]
    lengths = torch.tensor([e - s for s, e in segments], device=device)[:, None]
    t = torch.arange(longest, device=device)[None, :]
    return torch.where(t < lengths, starts + t, -1)
