"""Projection alternatives on real per-example gradients: speed, JL fidelity, batch independence.

Computes the exact per-example LoRA gradients of --rows demo candidates once (curator.gradients.fastgrad,
fp32), then projects them to --dim with each alternative and prints, for each:
  - examples/s of the projection alone, and its speed-up over the dense matrix regenerated per
    call (the baseline, measured in the same run);
  - the memory the projection keeps between calls;
  - Spearman(projected cosine, exact cosine) over all pairs of rows (JL fidelity);
  - whether every row's vector is bit-identical when projected alone and inside the batch.
Alternatives: the dense Rademacher matrix regenerated per call; the same matrix cached (only
where it fits --cache-limit); the sparse JL matrix with 1, 2, 4 and 8 nonzeros per coordinate.

    python benchmarks/projection.py [--model tiny-random|smollm2-135m] [--rows N] [--dim D] [--batch B]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from curator.config import IndexConfig, ProjectionConfig
from curator.io.data import load_candidates
from curator.demo import demo_data_dir
from curator.gradients.fastgrad import per_example_gradients
from curator.influence.indexing import Featurizer
from curator.gradients.projection import RademacherProjector, SparseProjector


def pair_cosines(x: torch.Tensor) -> np.ndarray:
    x = x.double()
    x = x / x.norm(dim=1, keepdim=True)
    sim = (x @ x.T).numpy()
    return sim[np.triu_indices(len(sim), k=1)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def held_bytes(proj: Any) -> int:
    if isinstance(proj, SparseProjector):
        return proj.positions.numel() * proj.positions.element_size() + proj.weights.numel() * proj.weights.element_size()
    return sum(b.numel() * b.element_size() for b in (proj._cache or []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8, help="rows per projection call")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per alternative; the best counts")
    ap.add_argument("--cache-limit", type=float, default=4.0, help="GiB a cached dense matrix may take; larger ones are skipped")
    args = ap.parse_args()
    feat = Featurizer(IndexConfig(model=args.model, projection=ProjectionConfig(dim=args.dim)))
    rows = load_candidates(demo_data_dir() / "candidates.jsonl")[: args.rows]
    grads = per_example_gradients(feat.computer.model, feat.computer.params, [feat.encode(r) for r in rows])
    n, width = grads.shape
    exact = pair_cosines(grads)
    print(f"model={args.model} rows={n} lora_params={width} dim={args.dim} batch={args.batch} exact pairwise cosine spread (std) {exact.std():.4f}")

    dense_bytes = width * args.dim * 4
    alts: dict[str, Any] = {"dense, regenerated": RademacherProjector(ProjectionConfig(dim=args.dim, kind="rademacher"), width, cache_bytes=0)}
    if dense_bytes <= args.cache_limit * 2**30:
        alts["dense, cached"] = RademacherProjector(ProjectionConfig(dim=args.dim, kind="rademacher"), width, cache_bytes=dense_bytes)
    for s in (1, 2, 4, 8):
        alts[f"sparse, {s} nonzeros"] = SparseProjector(ProjectionConfig(dim=args.dim, nonzeros=s), width)

    print(f"{'projection':22s} {'ex/s':>10s} {'vs baseline':>12s} {'held MiB':>9s} {'spearman':>9s} {'batch-independent':>18s}")
    base = None
    for name, proj in alts.items():
        proj.project(grads[:1])  # warm-up (fills the dense cache)
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            out = torch.cat([proj.project(grads[lo : lo + args.batch]) for lo in range(0, n, args.batch)])
            best = min(best, time.perf_counter() - start)
        base = base or best
        alone = all(torch.equal(proj.project(grads[i : i + 1])[0], out[i]) for i in range(min(n, 4)))
        print(f"{name:22s} {n / best:10.2f} {base / best:11.1f}x {held_bytes(proj) / 2**20:9.1f} {spearman(pair_cosines(out), exact):9.4f} {str(alone):>18s}")
    if "dense, cached" not in alts:
        print(f"dense, cached: skipped, the matrix needs {dense_bytes / 2**30:.1f} GiB (over --cache-limit {args.cache_limit} GiB)")


if __name__ == "__main__":
    main()
