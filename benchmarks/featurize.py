"""Featurisation throughput: curator's index path against the floor and a LESS-style loop, in one run.

Prints examples/s for
  (a) curator's path, end to end (`index_rows` into a temporary store, writes included): batched
      per-example gradients from hooks (curator.gradients.fastgrad) over batches packed without padding
      (curator.gradients.packing; --packing off pads them like (b)) with the loss and its gradient at the
      scored rows in one pass (curator.gradients.scoredloss, fp32 packed), the store's projection (sparse JL by
      default; --projection rademacher for the dense one), normalisation;
  (b) the floor: a plain batched forward + loss.backward() over the same length buckets, with no
      per-example work at all (logits at every position, as a training step computes them);
  (b2) the tight floor: (b) with curator's own saving too (the vocabulary projection only at the
      scored positions), a summed backward to the LoRA weights and still no per-example work;
  (b3) the packed floor, where (a) packs: (b2) over (a)'s own packed batches with its one-pass
      loss, so a/b3 is exactly what the per-example extraction, projection and writes cost;
  (c) a LESS-style loop: batch size 1, the full per-example gradient (reference_gradients), then
      a blocked dense Rademacher projection (LESS projects with a dense random matrix) and
      normalisation;
and the ratios a/b and a/c, plus how (a)'s time splits between gradients and projection.
Ratios, not absolute times, are the result: the machine is noisy.

    python benchmarks/featurize.py [--model tiny-random|smollm2-135m] [--rows N] [--dim D]
        [--batch B] [--tokens-per-batch T] [--dtype fp32|bf16] [--projection sparse|rademacher]
        [--packing auto|off] [--repeat K]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from curator.config import IndexConfig, ProjectionConfig
from curator.io.data import load_candidates
from curator.demo import demo_data_dir
from curator.model.encoding import IGNORE_INDEX, Encoded
from curator.gradients.fastgrad import buckets, pad_batch, pad_id_of, per_example_gradients
from curator.influence.indexing import Featurizer, index_rows
from curator.gradients.packing import pack, packed_attention, packed_inputs, segment_ids, supports_packing
from curator.gradients.scoredloss import fusable, scored_nll
from curator.gradients.projection import RademacherProjector, normalize


class FastFeaturizer(Featurizer):
    """Featurizer whose vectors come from curator.gradients.fastgrad; records where the time goes."""

    def __init__(self, *args: Any, tokens_per_batch: int | None = None, dtype: str = "fp32", packing: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens_per_batch = tokens_per_batch
        self.dtype = dtype
        self.packing = packing
        self.seconds = {"gradients": 0.0, "projection": 0.0}
        self.last: list[np.ndarray] = []

    def vectors(self, examples: list[Encoded], kind: str | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        grads = per_example_gradients(self.computer.model, self.computer.params, examples, tokens_per_batch=self.tokens_per_batch, dtype=self.dtype, packing=self.packing)
        t1 = time.perf_counter()
        vecs = normalize(self.projector.project(grads))
        t2 = time.perf_counter()
        self.seconds["gradients"] += t1 - t0
        self.seconds["projection"] += t2 - t1
        self.last.append(vecs)
        return vecs


def floor(feat: FastFeaturizer, encs: list[Encoded], batch: int) -> None:
    """Batched forward + backward of the mean response loss over the same buckets: no method can beat it."""
    model = feat.computer.model
    pad = feat.loaded.tokenizer.pad_token_id
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if feat.dtype == "bf16" else nullcontext
    for lo in range(0, len(encs), batch):
        rows = encs[lo : lo + batch]
        for idx in buckets(rows, tokens_per_batch=feat.tokens_per_batch):
            chunk = [rows[i] for i in idx]
            n = max(len(e.input_ids) for e in chunk)
            ids = torch.tensor([e.input_ids + [pad] * (n - len(e.input_ids)) for e in chunk])
            labels = torch.tensor([e.labels + [IGNORE_INDEX] * (n - len(e.labels)) for e in chunk])
            mask = (torch.arange(n)[None, :] < torch.tensor([len(e.input_ids) for e in chunk])[:, None]).long()
            with ctx():
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
            loss.backward()
            model.zero_grad(set_to_none=True)


def tight_floor(feat: FastFeaturizer, encs: list[Encoded], batch: int) -> None:
    """(b) computing logits only where a response token is scored, and a summed LoRA backward."""
    comp = feat.computer
    params = [p for _, p in comp.params]
    lm_head = comp.model.get_base_model().get_output_embeddings()
    pad = pad_id_of(comp.model)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if feat.dtype == "bf16" else nullcontext
    for lo in range(0, len(encs), batch):
        rows = encs[lo : lo + batch]
        for idx in buckets(rows, tokens_per_batch=feat.tokens_per_batch):
            ids, mask, targets = pad_batch([rows[i] for i in idx], pad)
            keep = (targets != IGNORE_INDEX).reshape(-1).nonzero().squeeze(1)
            with ctx():
                hidden = comp.model.get_base_model().model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                logits = lm_head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep))
            loss = torch.nn.functional.cross_entropy(logits.float(), targets.reshape(-1).index_select(0, keep))
            torch.autograd.grad(loss, params)


def packed_floor(feat: FastFeaturizer, encs: list[Encoded], batch: int) -> None:
    """(b2) with every saving (a) has: the same packed batches, the one-pass loss, and still a summed backward."""
    comp = feat.computer
    params = [p for _, p in comp.params]
    base = comp.model.get_base_model()
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if feat.dtype == "bf16" else nullcontext
    for lo in range(0, len(encs), batch):
        rows = encs[lo : lo + batch]
        for idx in buckets(rows, tokens_per_batch=feat.tokens_per_batch, packed=True):
            ids, positions, targets, segments = pack([rows[i] for i in idx])
            keep = (targets.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)
            example = segment_ids(segments)[keep]
            weight = (1.0 / torch.bincount(example).float())[example]
            with packed_attention(comp.model), ctx():
                hidden = base.model(input_ids=ids, position_ids=positions, use_cache=False, **packed_inputs(segments, ids.device)).last_hidden_state
                h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
            tgt = targets.reshape(-1).index_select(0, keep)
            if feat.dtype == "fp32" and fusable(base.get_output_embeddings()):
                loss = scored_nll(h, base.get_output_embeddings().weight, tgt, weight)
            else:
                loss = (torch.nn.functional.cross_entropy(base.get_output_embeddings()(h).float(), tgt, reduction="none") * weight).sum()
            torch.autograd.grad(loss, params)


def less_loop(feat: FastFeaturizer, dense: RademacherProjector, encs: list[Encoded], batch: int, seconds: dict[str, float]) -> list[np.ndarray]:
    """LESS-style: one backward per example, the full gradient, then the blocked dense projection of each chunk."""
    out = []
    for lo in range(0, len(encs), batch):
        t0 = time.perf_counter()
        grads = feat.computer.reference_gradients(encs[lo : lo + batch])
        t1 = time.perf_counter()
        out.append(normalize(dense.project(grads)))
        seconds["gradients"] += t1 - t0
        seconds["projection"] += time.perf_counter() - t1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8, help="rows per Featurizer.vectors call (IndexConfig.batch_size)")
    ap.add_argument("--tokens-per-batch", type=int, default=None, help="padded-token budget per forward (default: fastgrad's)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--projection", choices=("sparse", "rademacher"), default="sparse", help="(a)'s projection; (c) always uses the dense one")
    ap.add_argument("--packing", choices=("auto", "off"), default="auto", help="(a)'s batches: packed without padding where exact (auto, as `curator index`), or padded like (b)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per path, interleaved; the best counts")
    args = ap.parse_args()
    feat = FastFeaturizer(IndexConfig(model=args.model, projection=ProjectionConfig(dim=args.dim, kind=args.projection), batch_size=args.batch), tokens_per_batch=args.tokens_per_batch, dtype=args.dtype, packing=None if args.packing == "auto" else False)
    rows = load_candidates(demo_data_dir() / "candidates.jsonl")[: args.rows]
    encs = [feat.encode(r) for r in rows]
    # warm-up (allocator, kernels; fills the projection cache when the matrix is small enough to keep)
    per_example_gradients(feat.computer.model, feat.computer.params, encs[:2], dtype=args.dtype, packing=feat.packing)
    floor(feat, encs[:2], 2)
    tight_floor(feat, encs[:2], 2)
    if supports_packing(feat.computer.model):
        packed_floor(feat, encs[:2], 2)
    feat.computer.reference_gradients(encs[:1])
    dense = RademacherProjector(ProjectionConfig(dim=args.dim, kind="rademacher"), feat.computer.n_params)
    for proj in (feat.projector, dense):  # fills the dense cache when the matrix is small enough to keep
        proj.project(torch.zeros(1, feat.computer.n_params))

    timings: dict[str, float] = {}
    split: dict[str, float] = {}
    less_seconds: dict[str, float] = {}
    less_split: dict[str, float] = {}
    vecs: dict[str, np.ndarray] = {}

    def run_index() -> None:
        feat.seconds = {"gradients": 0.0, "projection": 0.0}
        feat.last = []
        with tempfile.TemporaryDirectory() as tmp:
            index_rows(feat, rows, f"{tmp}/store", "candidates")
        vecs["a"] = np.concatenate(feat.last)

    def run_less() -> None:
        less_seconds.update(gradients=0.0, projection=0.0)
        vecs["c"] = np.concatenate(less_loop(feat, dense, encs, args.batch, less_seconds))

    paths = {"b_floor": lambda: floor(feat, encs, args.batch), "b2_tight_floor": lambda: tight_floor(feat, encs, args.batch), "a_curator_index": run_index, "c_less_loop": run_less}
    packed = supports_packing(feat.computer.model) if feat.packing is None else feat.packing
    if packed:
        paths["b3_packed_floor"] = lambda: packed_floor(feat, encs, args.batch)
    for _ in range(args.repeat):  # interleaved; the best of the repeats counts (the machine is shared)
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            took = time.perf_counter() - start
            if took < timings.get(name, float("inf")):
                timings[name] = took
                if name == "a_curator_index":
                    split = dict(feat.seconds)
                if name == "c_less_loop":
                    less_split = dict(less_seconds)
    for name in paths:
        print(f"{name:18s} {len(encs) / timings[name]:8.2f} ex/s  ({timings[name]:.2f} s, best of {args.repeat})")

    a = timings["a_curator_index"]
    g, p = split["gradients"], split["projection"]
    lengths = [len(e.input_ids) for e in encs]
    print(f"model={args.model} rows={len(encs)} dim={args.dim} batch={args.batch} tokens_per_batch={args.tokens_per_batch or 'default'} dtype={args.dtype} projection={args.projection} lora_params={feat.computer.n_params} mean_tokens={np.mean(lengths):.0f}")
    real = sum(lengths)
    padded = sum(max(lengths[lo + i] for i in idx) * len(idx) for lo in range(0, len(encs), args.batch) for idx in buckets(encs[lo : lo + args.batch], tokens_per_batch=args.tokens_per_batch))
    print(f"(a) batches: {'packed into one row each, no padding' if packed else 'padded'}; (b)/(b2) padded batches hold {padded} tokens for {real} real ({1 - real / padded:.0%} padding)")
    print(f"(a) split: gradients {g:.2f} s ({g / a:.0%}), projection {p:.2f} s ({p / a:.0%}), rest (encode, writes, index) {a - g - p:.2f} s ({(a - g - p) / a:.0%})")
    print(f"(c) split: gradients {less_split['gradients']:.2f} s, projection {less_split['projection']:.2f} s")
    print(f"(a) gradients alone vs floor  = {timings['b_floor'] / g:.3f}")
    print(f"(a) vs (c), gradients alone   = {less_split['gradients'] / g:.3f}")
    print(f"a/b (index vs floor)          = {timings['b_floor'] / a:.3f}")
    print(f"a/b2 (index vs tight floor)   = {timings['b2_tight_floor'] / a:.3f}")
    if "b3_packed_floor" in timings:
        print(f"a/b3 (index vs packed floor)  = {timings['b3_packed_floor'] / a:.3f}   (what the per-example work, projection and writes cost)")
    print(f"a/c (index vs LESS loop)      = {timings['c_less_loop'] / a:.3f}")
    if args.projection == "rademacher":  # same matrix: the vectors must agree
        cos = np.sum(vecs["a"] * vecs["c"], axis=1)
        print(f"min cosine (a) vs (c) vectors = {cos.min():.6f}")
    else:  # different matrices: compare the pairwise cosines they estimate
        pa, pc = vecs["a"] @ vecs["a"].T, vecs["c"] @ vecs["c"].T
        iu = np.triu_indices(len(pa), k=1)
        print(f"pairwise cosines (a) vs (c): max |diff| {np.abs(pa[iu] - pc[iu]).max():.4f}")
    if args.dtype == "bf16":
        sample = encs[: min(8, len(encs))]
        ref = per_example_gradients(feat.computer.model, feat.computer.params, sample, tokens_per_batch=args.tokens_per_batch)
        low = per_example_gradients(feat.computer.model, feat.computer.params, sample, tokens_per_batch=args.tokens_per_batch, dtype="bf16")
        c = torch.nn.functional.cosine_similarity(low, ref, dim=1)
        print(f"bf16 fidelity: cosine to fp32 gradients min {c.min():.5f} mean {c.mean():.5f} (over {len(sample)} rows)")


if __name__ == "__main__":
    main()
