"""Featurisation throughput: curator's index path against the floor, measured in one run.

Prints examples/s for
  (a) curator's path: per-example gradients + projection + normalisation (Featurizer.vectors),
  (b) the floor: a plain batched forward + loss.backward() over the same rows, no per-example work,
  (c) per-example gradients alone (no projection),
and the ratios a/b and a/c. Ratios, not absolute times, are the result: the machine is noisy.

    python benchmarks/featurize.py [--model tiny-random|smollm2-135m] [--rows N] [--dim D]
"""

from __future__ import annotations

import argparse
import time

import torch

from curator.config import IndexConfig, ProjectionConfig
from curator.data import load_candidates
from curator.demo import demo_data_dir
from curator.encoding import IGNORE_INDEX
from curator.indexing import Featurizer


def floor(feat: Featurizer, encs: list, batch: int) -> None:
    """Batched forward + backward of the summed response loss: the cost no per-example method can beat."""
    model = feat.computer.model
    pad = feat.loaded.tokenizer.pad_token_id
    for lo in range(0, len(encs), batch):
        chunk = encs[lo : lo + batch]
        n = max(len(e.input_ids) for e in chunk)
        ids = torch.tensor([e.input_ids + [pad] * (n - len(e.input_ids)) for e in chunk])
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (n - len(e.labels)) for e in chunk])
        mask = (torch.arange(n)[None, :] < torch.tensor([len(e.input_ids) for e in chunk])[:, None]).long()
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
        loss.backward()
        model.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    feat = Featurizer(IndexConfig(model=args.model, projection=ProjectionConfig(dim=args.dim), batch_size=args.batch))
    rows = load_candidates(demo_data_dir() / "candidates.jsonl")[: args.rows]
    encs = [feat.encode(r) for r in rows]
    timings = {}
    for name, fn in {
        "b_floor": lambda: floor(feat, encs, args.batch),
        "c_gradients_only": lambda: [feat.computer.gradients(encs[lo : lo + args.batch]) for lo in range(0, len(encs), args.batch)],
        "a_curator_index": lambda: [feat.vectors(encs[lo : lo + args.batch]) for lo in range(0, len(encs), args.batch)],
    }.items():
        start = time.perf_counter()
        fn()
        timings[name] = len(encs) / (time.perf_counter() - start)
        print(f"{name:18s} {timings[name]:8.2f} ex/s")
    print(f"model={args.model} rows={len(encs)} dim={args.dim} batch={args.batch} lora_params={feat.computer.n_params}")
    print(f"a/b (index vs floor)          = {timings['a_curator_index'] / timings['b_floor']:.3f}")
    print(f"a/c (index vs gradients only) = {timings['a_curator_index'] / timings['c_gradients_only']:.3f}")


if __name__ == "__main__":
    main()
