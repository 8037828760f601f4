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

import logging
from collections import deque
from contextlib import ExitStack, nullcontext
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from curator.model.encoding import IGNORE_INDEX, Encoded
from curator.errors import CuratorRuntimeError, InputError
from curator.gradients.checkpointing import checkpointed_layers, modules_inside
from curator.gradients.hooks import GradientHooks, Params, segment_gather_index
from curator.gradients.packing import PACKABLE_MODEL_TYPES, base_model, pack, packed_attention, packed_inputs, packed_kernel, segment_ids, supports_packing
from curator.gradients.scoredloss import fusable, scored_nll
from curator.model.device import TORCH_DTYPES, is_out_of_memory, model_device, release_cached_memory

log = logging.getLogger("curator")

DTYPES = ("fp32", "bf16", "fp16")
# Devices where a packed batch's per-example sums run as one gathered batched product rather than
# one small product per example (the CPU's fastest; on a GPU each would be a kernel launch).
BATCHED_PRODUCT_DEVICES = frozenset({"cuda", "mps"})
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


def batch_tokens(examples: Sequence[Encoded], packed: bool) -> int:
    """A batch's size as ``buckets`` counts it: the packed length, or longest × count when padded."""
    lengths = [len(e.input_ids) for e in examples]
    return sum(lengths) if packed else max(lengths) * len(lengths)


class Backoff:
    """Out-of-memory back-off shared by the batches of one run: after a device OOM, a batch is
    split to half its token size and retried, and later batches keep under that cap. It says so
    once, through the ``curator`` logger (the CLI prints it)."""

    def __init__(self) -> None:
        self.cap: int | None = None
        self.said = False

    def shrink(self, size: int, device: torch.device, what: str = "tokens") -> int:
        new = max(1, size // 2)
        self.cap = new if self.cap is None else min(self.cap, new)
        if not self.said:
            log.warning("out of memory on %s with a batch of %d %s: halving it to %d and retrying (later batches stay under that)", device, size, what, new)
            self.said = True
        return new


def _batch(model: Any, hooks: GradientHooks, examples: list[Encoded], dtype: str, pad_id: int, packed: bool, kernel: str, device: torch.device) -> torch.Tensor:
    """Per-example gradients of one batch (packed into one row, or padded), [B, n_params] float32, on ``device``."""
    model_inputs: dict[str, Any]
    if packed:
        ids, positions, targets, segments = pack(examples)
        example_of_position = segment_ids(segments).to(device)
        model_inputs = {"input_ids": ids.to(device), "position_ids": positions.to(device), **packed_inputs(segments, device, kernel)}
        hooks.segments = segments
        if device.type in BATCHED_PRODUCT_DEVICES:
            hooks.gather = segment_gather_index(segments, device)
        attention = packed_attention(model, kernel)
    else:
        ids, mask, targets = pad_batch(examples, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        example_of_position = torch.arange(len(examples), device=device).repeat_interleave(ids.shape[1])
        model_inputs = {"input_ids": ids, "attention_mask": mask}
        hooks.mask = mask.unsqueeze(-1).to(torch.float32)
        attention = nullcontext()
    targets = targets.to(device)
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

    hooks.out = torch.zeros(len(examples), hooks.n_params, dtype=torch.float32, device=device)
    base = base_model(model)
    lm_head = base.get_output_embeddings()
    row_targets = targets.reshape(-1).index_select(0, rows)
    row_weight = weight.index_select(0, example_of_row)
    # packed fp32 batches: the loss and its gradient in one pass (curator.gradients.scoredloss)
    fused = packed and dtype == "fp32" and fusable(lm_head)
    handle = None if fused else lm_head.register_forward_pre_hook(gather_rows)
    try:
        with torch.enable_grad(), attention:
            if fused:
                hidden = base.model(**model_inputs, use_cache=False).last_hidden_state
                loss = scored_nll(hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows), lm_head.weight, row_targets, row_weight)
            else:
                assert handle is not None
                with _autocast(base, dtype, device):
                    logits = model(**model_inputs, use_cache=False).logits
                handle.remove()
                if logits.dim() != 2 or logits.shape[0] != rows.numel():
                    raise NotImplementedError(f"{type(base).__name__} reshapes its logits: fast per-example gradients do not support it")
                loss = (F.cross_entropy(logits.float(), row_targets, reduction="none") * row_weight).sum()
            # backward outside autocast; only the hooked outputs are asked for, so the summed
            # LoRA weight gradients (.grad) are never formed. A checkpointed layer's forward runs
            # again from here on: the hooks hand its inputs over instead of hooking anew.
            hooks.replaying = True
            torch.autograd.grad(loss, hooks.roots)
        return hooks.out
    finally:
        if handle is not None:
            handle.remove()
        hooks.reset()


def _autocast(base: Any, dtype: str, device: torch.device) -> Any:
    """Autocast to ``dtype`` where the weights are wider (fp32 weights, the CPU's bf16); nothing
    where they already are in it (a GPU model loaded in bf16) or for fp32."""
    if dtype == "fp32" or next(base.parameters()).dtype != torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=TORCH_DTYPES[dtype])


def iter_per_example_gradients(
    model: Any,
    params: Params,
    examples: Sequence[Encoded],
    batch_size: int | None = None,
    tokens_per_batch: int | None = None,
    dtype: str = "fp32",
    packing: bool | None = None,
    attention: str = "auto",
    gradient_checkpointing: bool = False,
    backoff: Backoff | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices into ``examples``, their gradients [len, n_params] on the model's device) one batch at a time.

    ``model`` is the peft model whose trainable LoRA ``params`` (the gradient layout) are hooked.

    ``packing``: None packs batches wherever that is exact (``curator.gradients.packing.supports_packing``),
    False always pads, True packs or raises NotImplementedError for a model it would not be exact for.
    ``attention``: the packed batches' attention (``curator.gradients.packing.packed_kernel``).
    ``gradient_checkpointing``: recompute each decoder layer in the backward instead of keeping
    its activations (``curator.gradients.checkpointing``); the gradients are the same.
    A device out-of-memory error splits the batch in two by tokens and retries it (``Backoff``);
    a batch is yielded only once it has succeeded, so no row is lost or given twice.
    """
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is unknown: use one of {', '.join(DTYPES)} (--dtype)")
    packable = supports_packing(model)
    if packing and not packable:
        raise NotImplementedError(f"{type(base_model(model)).__name__}: packed batches are exact only for {', '.join(sorted(PACKABLE_MODEL_TYPES))} models")
    packed = packable if packing is None else packing
    pad_id = pad_id_of(model)
    device = model_device(model)
    kernel = packed_kernel(model, attention) if packed else "sdpa"
    backoff = backoff or Backoff()
    with ExitStack() as stack:
        replayed = modules_inside(stack.enter_context(checkpointed_layers(model))) if gradient_checkpointing else frozenset()
        hooks = GradientHooks(model, params, replayed)
        stack.callback(hooks.remove)
        queue = deque(buckets(examples, batch_size, tokens_per_batch, packed=packed))
        while queue:
            idx = queue.popleft()
            size = batch_tokens([examples[i] for i in idx], packed)
            if backoff.cap is not None and size > backoff.cap and len(idx) > 1:
                queue.extendleft(reversed(_split(examples, idx, backoff.cap, packed)))
                continue
            grads = None
            try:
                grads = _batch(model, hooks, [examples[i] for i in idx], dtype, pad_id, packed, kernel, device)
            except Exception as exc:  # noqa: BLE001 (only a device OOM is handled; the rest re-raised)
                if not is_out_of_memory(exc):
                    raise
            if grads is None:  # out of memory: retried in halves, once the failed batch's tensors are freed
                release_cached_memory(device)
                if len(idx) == 1:
                    raise CuratorRuntimeError(f"one example of {size} tokens does not fit in {device} memory on its own: lower --max-length, or add --gradient-checkpointing")
                queue.extendleft(reversed(_split(examples, idx, backoff.shrink(size, device), packed)))
                continue
            yield idx, grads


def _split(examples: Sequence[Encoded], idx: list[int], cap: int, packed: bool) -> list[list[int]]:
    """``idx`` cut into batches of at most ``cap`` tokens (at least two, each holding one example or more)."""
    sub = buckets([examples[i] for i in idx], tokens_per_batch=cap, packed=packed)
    if len(sub) == 1:  # the cap cannot split it by tokens (one long example dominates): halve by count
        half = len(idx) // 2
        sub = [list(range(half)), list(range(half, len(idx)))]
    return [[idx[j] for j in part] for part in sub]


def per_example_gradients(
    model: Any,
    params: Params,
    examples: Sequence[Encoded],
    batch_size: int | None = None,
    tokens_per_batch: int | None = None,
    dtype: str = "fp32",
    packing: bool | None = None,
    attention: str = "auto",
    gradient_checkpointing: bool = False,
    backoff: Backoff | None = None,
) -> torch.Tensor:
    """Raw per-example gradients [n, n_params] float32 on the model's device, in the order and layout of ``reference_gradients``."""
    out = torch.empty(len(examples), sum(p.numel() for _, p in params), dtype=torch.float32, device=model_device(model))
    for idx, grads in iter_per_example_gradients(model, params, examples, batch_size, tokens_per_batch, dtype, packing, attention, gradient_checkpointing, backoff):
        out[torch.tensor(idx, dtype=torch.long, device=out.device)] = grads
    return out
