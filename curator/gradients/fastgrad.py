"""Per-example LoRA gradients from one batched forward + backward (the linear-layer trick).

For a linear layer y = x Wᵀ the gradient of a sum of per-example losses splits by example:
dL/dW = Σ_b Σ_t g[b,t]ᵀ x[b,t], with g = dL/dy. So one batched backward gives every example's
gradient, provided we keep each example's term apart instead of summing over b. Forward hooks
on every trainable LoRA ``Linear`` (peft's ``lora_A[adapter]`` and ``lora_B[adapter]``) record
the layer input x, a tensor hook on the layer output receives g during the backward, and the
per-example gradient ``einsum("bto,bti->boi", g, x)`` is written straight into the output rows
(as in LoGra / Opacus). peft's scaling (alpha/r) and its dropout (identity in eval mode) act on
the tensors the hooks see, so nothing has to be re-applied.

The batched loss is the SUM over examples of each example's own mean response-token NLL, so
each example keeps its own normalisation and no gradient mixes across examples. For models
where it is exact (``curator.gradients.packing``: Llama, SmolLM2 included, Mistral, Qwen2, Qwen3) a batch is packed
into one row with no padding at all, attention running per example; each example's gradient is
then the sum over its own segment of the row. Other models get right-padded batches with an
attention mask; padded positions carry no loss, and their inputs or output-gradients are masked
to zero anyway. The vocabulary projection (``lm_head``) is applied only at the positions that
are scored, which saves the logits and softmax of every prompt and padding token: packed fp32
batches compute that loss together with its gradient in one pass (``curator.gradients.scoredloss``), the
others gather the scored rows with a forward pre-hook and use cross-entropy.

This module takes a peft model and its trainable parameters, and knows nothing of the
``GradientComputer`` that calls it. Rows come back in the caller's order, in the layout of the
``params`` given (``lora_parameters`` order, sorted by name), each weight flattened row-major:
the layout of ``GradientComputer.reference_gradients``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from curator.model.encoding import IGNORE_INDEX, Encoded
from curator.errors import InputError
from curator.gradients.packing import PACKABLE_MODEL_TYPES, base_model, pack, packed_attention, segment_ids, supports_packing
from curator.gradients.scoredloss import fusable, scored_nll

# (name, parameter) pairs in gradient-layout order, as ``lora_parameters`` gives them
Params = Sequence[tuple[str, torch.nn.Parameter]]

DTYPES = ("fp32", "bf16")
# The default batch when neither a count nor a token budget is given: tokens per batch.
DEFAULT_TOKENS_PER_BATCH = 1024


def buckets(examples: Sequence[Encoded], batch_size: int | None = None, tokens_per_batch: int | None = None, packed: bool = False) -> list[list[int]]:
    """Length-sorted batches of indices into ``examples``.

    Examples are sorted by token length (longest first, ties in input order) and cut greedily:
    a batch closes when it holds ``batch_size`` examples, or when one more example would make
    its size exceed ``tokens_per_batch``. The size is the padded size (longest length × count),
    or with ``packed`` the packed length (the sum of lengths). Both limits may be given; with
    neither, ``DEFAULT_TOKENS_PER_BATCH`` applies. An example longer than the budget on its own
    gets a batch of its own.
    """
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size={batch_size} is invalid: use an integer >= 1 (--batch-size)")
    if tokens_per_batch is not None and tokens_per_batch < 1:
        raise InputError(f"tokens_per_batch={tokens_per_batch} is invalid: use an integer >= 1 (--tokens-per-batch)")
    if batch_size is None and tokens_per_batch is None:
        tokens_per_batch = DEFAULT_TOKENS_PER_BATCH
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    out: list[list[int]] = []
    cur: list[int] = []
    longest = total = 0
    for i in order:
        n = len(examples[i].input_ids)
        full = batch_size is not None and len(cur) >= batch_size
        size = total + n if packed else max(longest, n) * (len(cur) + 1)
        over = tokens_per_batch is not None and size > tokens_per_batch
        if cur and (full or over):
            out.append(cur)
            cur, longest, total = [], 0, 0
        cur.append(i)
        longest = max(longest, n)
        total += n
    if cur:
        out.append(cur)
    return out


class _Hooks:
    """Hooks on the trainable LoRA Linears that write per-example gradients into ``self.out``."""

    def __init__(self, model: Any, params: Params) -> None:
        slots: dict[int, tuple[int, torch.Size]] = {}
        off = 0
        for _, p in params:
            slots[id(p)] = (off, p.shape)
            off += p.numel()
        self.n_params = off
        self.out: torch.Tensor | None = None  # [B, n_params] for the batch in flight
        self.mask: torch.Tensor | None = None  # padded batch: [B, T, 1] float, 1 on real tokens
        self.segments: list[tuple[int, int]] | None = None  # packed batch: example b is row positions [s, e)
        self.roots: list[torch.Tensor] = []  # outputs the backward must reach
        self._root_ids: set[int] = set()
        self._handles: list[Any] = []
        found: set[int] = set()
        for _, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and id(module.weight) in slots:
                if module.bias is not None and module.bias.requires_grad:
                    raise NotImplementedError("fast per-example gradients cover LoRA weights only, not trainable biases")
                found.add(id(module.weight))
                self._handles.append(module.register_forward_hook(self._forward_hook(*slots[id(module.weight)])))
        missing = [n for n, p in params if id(p) not in found]
        if missing:
            self.remove()
            raise NotImplementedError(f"trainable parameter {missing[0]} is not a Linear weight: fast per-example gradients do not cover it")

    def _forward_hook(self, off: int, shape: torch.Size) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self.out is None or not output.requires_grad:
                return
            x = inputs[0]
            holder = [x]

            def on_grad(g: torch.Tensor) -> None:
                self._accumulate(off, shape, holder.pop(), g)

            output.register_hook(on_grad)
            # lora_B consumes lora_A's output directly: reaching lora_A's output in the backward
            # already runs lora_B's hook, so an output whose input is a root is not a root itself.
            # (Roots stay referenced in self.roots, so their ids cannot be reused meanwhile.)
            if id(x) not in self._root_ids:
                self.roots.append(output)
                self._root_ids.add(id(output))

        return hook

    def _accumulate(self, off: int, shape: torch.Size, x: torch.Tensor, g: torch.Tensor) -> None:
        """out[b, W slice] += Σ_t g[b,t]ᵀ x[b,t], in float32 whatever the autocast dtype."""
        out, mask, segments = self.out, self.mask, self.segments
        if out is None or (mask is None and segments is None):
            return
        b = out.shape[0]
        k = shape[0] * shape[1]
        if segments is not None:  # packed: one row, example b owns positions [s, e)
            with torch.autocast("cpu", enabled=False):
                x = x.reshape(-1, x.shape[-1]).float()
                g = g.reshape(-1, g.shape[-1]).float()
                for i, (s, e) in enumerate(segments):
                    out[i, off : off + k].view(shape[0], shape[1]).addmm_(g[s:e].t(), x[s:e])
            return
        assert mask is not None
        with torch.autocast("cpu", enabled=False):
            x = x.reshape(b, -1, x.shape[-1]).float()
            g = g.reshape(b, -1, g.shape[-1]).float()
            # mask the narrower side (r columns): padded positions must add nothing
            if g.shape[-1] <= x.shape[-1]:
                g = g * mask
            else:
                x = x * mask
            out[:, off : off + k].view(b, shape[0], shape[1]).add_(torch.bmm(g.transpose(1, 2), x))

    def reset(self) -> None:
        self.out, self.mask, self.segments, self.roots = None, None, None, []
        self._root_ids = set()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.reset()


def pad_batch(examples: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded inputs (last token dropped: it predicts nothing scored), attention mask and targets."""
    n = max(len(e.input_ids) for e in examples) - 1
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for b, e in enumerate(examples):
        m = len(e.input_ids) - 1
        ids[b, :m] = torch.tensor(e.input_ids[:-1], dtype=torch.long)
        targets[b, :m] = torch.tensor(e.labels[1:], dtype=torch.long)
        mask[b, :m] = 1
    return ids, mask, targets


def pad_id_of(model: Any) -> int:
    """The id that pads batches: the model's pad token, else its eos or bos token, else 0."""
    cfg = base_model(model).config
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(cfg, name, None)
        if isinstance(v, list):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return 0


def _batch(model: Any, hooks: _Hooks, examples: list[Encoded], dtype: str, pad_id: int, packed: bool) -> torch.Tensor:
    """Per-example gradients of one batch (packed into one row, or padded), [B, n_params] float32."""
    model_inputs: dict[str, torch.Tensor]
    if packed:
        ids, positions, targets, segments = pack(examples)
        example_of_position = segment_ids(segments)
        model_inputs = {"input_ids": ids, "position_ids": positions}
        hooks.segments = segments
        attention = packed_attention(model, segments)
    else:
        ids, mask, targets = pad_batch(examples, pad_id)
        example_of_position = torch.arange(len(examples)).repeat_interleave(ids.shape[1])
        model_inputs = {"input_ids": ids, "attention_mask": mask}
        hooks.mask = mask.unsqueeze(-1).to(torch.float32)
        attention = nullcontext()
    rows = (targets.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)  # flat positions whose logits are needed
    example_of_row = example_of_position.index_select(0, rows)
    n_scored = torch.bincount(example_of_row, minlength=len(examples))
    if bool((n_scored == 0).any()):
        hooks.reset()
        raise InputError("an example has no response token left to score after truncation: raise --max-length")
    weight = 1.0 / n_scored.to(torch.float32)

    def gather_rows(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        h = args[0]
        return (h.reshape(-1, h.shape[-1]).index_select(0, rows), *args[1:])

    hooks.out = torch.zeros(len(examples), hooks.n_params, dtype=torch.float32)
    base = base_model(model)
    lm_head = base.get_output_embeddings()
    row_targets = targets.reshape(-1).index_select(0, rows)
    row_weight = weight.index_select(0, example_of_row)
    # packed fp32 batches: the loss and its gradient in one pass (curator.gradients.scoredloss)
    fused = packed and dtype == "fp32" and fusable(lm_head)
    handle = None if fused else lm_head.register_forward_pre_hook(gather_rows)
    try:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
        with torch.enable_grad(), attention:
            if fused:
                hidden = base.model(**model_inputs, use_cache=False).last_hidden_state
                loss = scored_nll(hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows), lm_head.weight, row_targets, row_weight)
            else:
                assert handle is not None
                with ctx:
                    logits = model(**model_inputs, use_cache=False).logits
                handle.remove()
                if logits.dim() != 2 or logits.shape[0] != rows.numel():
                    raise NotImplementedError(f"{type(base).__name__} reshapes its logits: fast per-example gradients do not support it")
                loss = (F.cross_entropy(logits.float(), row_targets, reduction="none") * row_weight).sum()
            # backward outside autocast; only the hooked outputs are asked for, so the summed
            # LoRA weight gradients (.grad) are never formed
            torch.autograd.grad(loss, hooks.roots)
        return hooks.out
    finally:
        if handle is not None:
            handle.remove()
        hooks.reset()


def iter_per_example_gradients(
    model: Any,
    params: Params,
    examples: Sequence[Encoded],
    batch_size: int | None = None,
    tokens_per_batch: int | None = None,
    dtype: str = "fp32",
    packing: bool | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices into ``examples``, their gradients [len, n_params]) one batch at a time.

    ``model`` is the peft model whose trainable LoRA ``params`` (the gradient layout) are hooked.

    ``packing``: None packs batches wherever that is exact (``curator.gradients.packing.supports_packing``),
    False always pads, True packs or raises NotImplementedError for a model it would not be exact for.
    """
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is unknown: use one of {', '.join(DTYPES)} (--dtype)")
    packable = supports_packing(model)
    if packing and not packable:
        raise NotImplementedError(f"{type(base_model(model)).__name__}: packed batches are exact only for {', '.join(sorted(PACKABLE_MODEL_TYPES))} models")
    packed = packable if packing is None else packing
    pad_id = pad_id_of(model)
    hooks = _Hooks(model, params)
    try:
        for idx in buckets(examples, batch_size, tokens_per_batch, packed=packed):
            yield idx, _batch(model, hooks, [examples[i] for i in idx], dtype, pad_id, packed)
    finally:
        hooks.remove()


def per_example_gradients(
    model: Any,
    params: Params,
    examples: Sequence[Encoded],
    batch_size: int | None = None,
    tokens_per_batch: int | None = None,
    dtype: str = "fp32",
    packing: bool | None = None,
) -> torch.Tensor:
    """Raw per-example gradients [n, n_params] float32, in the order and layout of ``reference_gradients``."""
    out = torch.empty(len(examples), sum(p.numel() for _, p in params), dtype=torch.float32)
    for idx, grads in iter_per_example_gradients(model, params, examples, batch_size, tokens_per_batch, dtype, packing):
        out[torch.tensor(idx, dtype=torch.long)] = grads
    return out
