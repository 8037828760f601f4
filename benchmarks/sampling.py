"""Sampling throughput: batched generation against one prompt at a time, measured in one run.

Prints samples/s for
  (a) curator's path: ``sample_outputs`` with ``--batch-size`` prompts per batch (no cache),
  (b) the baseline: the same call with one prompt per batch (its k samples still share the batch),
the ratio a/b, and how many samples the two paths agree on (they should all match: samples are
seeded per prompt and row, not per batch). Ratios, not absolute times, are the result.

    python benchmarks/sampling.py [--model tiny-random|smollm2-135m] [--prompts N] [--k K] [--max-new-tokens T]
"""

from __future__ import annotations

import argparse
import time

import torch

from curator.io.data import load_candidates
from curator.demo import demo_data_dir
from curator.model.sampling import SamplingConfig, SamplingStats, sample_outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random", help="tiny-random (default) or smollm2-135m")
    ap.add_argument("--prompts", type=int, default=16, help="demo prompts, one per group")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per batch on the batched path")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from curator.model.models import load_model

    loaded = load_model(args.model)
    prompts: dict[str, object] = {}
    for c in load_candidates(demo_data_dir() / "candidates.jsonl"):
        if len(prompts) < args.prompts:
            prompts.setdefault(c.group, c.prompt)
    sample_outputs(loaded, dict(list(prompts.items())[:1]), SamplingConfig(k=1, max_new_tokens=2))  # warm-up
    results: dict[str, tuple[float, dict[str, list[str]], SamplingStats]] = {}
    for name, batch in [("b_one_prompt_at_a_time", 1), ("a_batched", args.batch_size)]:
        cfg = SamplingConfig(k=args.k, max_new_tokens=args.max_new_tokens, batch_size=batch)
        stats = SamplingStats()
        start = time.perf_counter()
        out = sample_outputs(loaded, prompts, cfg, stats=stats)
        results[name] = (len(prompts) * args.k / (time.perf_counter() - start), out, stats)
    (a, out_a, st_a), (b, out_b, _) = results["a_batched"], results["b_one_prompt_at_a_time"]
    same = sum(x == y for g in prompts for x, y in zip(out_a[g], out_b[g]))
    print(f"model={args.model} prompts={len(prompts)} k={args.k} max_new_tokens={args.max_new_tokens} batch_size={args.batch_size} threads={torch.get_num_threads()}")
    print(f"(a) batched sample_outputs:   {a:8.2f} samples/s")
    print(f"(b) one prompt at a time:     {b:8.2f} samples/s")
    print(f"ratio a/b: {a / b:.2f}x   identical samples: {same}/{len(prompts) * args.k}   empty samples: {st_a.empty}")


if __name__ == "__main__":
    main()
