"""Peak memory of `curator index` (and `curator influence`) as the store grows from 1k to 10k rows.

For each size it writes that many generated candidate rows (seeded short prompts and responses),
runs ``curator -q index DATA --out STORE --model tiny-random`` in a child process (the default
--dim, 8192), and reads the child's peak RSS from ``os.wait4``'s rusage (ru_maxrss). The model,
projection and per-batch work are the same at every size, so the growth between sizes is what
grows with the store: the finalize and the reads. For scale: a float32 copy of 10k x 8192
vectors is 328 MB, so a finalize that held one could not stay under the 200 MB target. Then
``curator influence`` against a 16-item eval store is measured the same way. The baseline, run
on the same stores in a child process of its own: the finalize curator had before its search
was made streaming (every part loaded, concatenated as float32, added to an in-memory
IndexIDMap2(IndexFlatIP), serialised to bytes).

    python benchmarks/memory.py [--sizes 1000,10000] [--search flat,hnsw] [--dim D] [--no-influence]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OLD_FINALIZE = """
import io, sys
import faiss, numpy as np
from curator.store.store import GradientStore
s = GradientStore.open(sys.argv[1])
parts = [np.load(io.BytesIO(s.read_checked(p, "vectors"))) for p in s.manifest["parts"]]
vecs = np.concatenate(parts).astype(np.float32)
index = faiss.IndexIDMap2(faiss.IndexFlatIP(s.dim))
index.add_with_ids(vecs, np.arange(len(vecs), dtype=np.int64))
data = faiss.serialize_index(index).tobytes()
"""
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon".split()


def curator_cmd() -> list[str]:
    script = Path(sys.executable).with_name("curator")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from curator.cli.main import main; main()"]


def write_rows(path: Path, n: int, role: str, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            q = f"Question {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(4, 12))) + "?"
            a = " ".join(rng.choices(WORDS, k=rng.randint(3, 24))) + "."
            row = {"id": f"{role[0]}{i}", "prompt": q, "response": a, "task": f"t{i % 4}"}
            if role == "candidates":
                row.update(strategy=("direct", "cot")[i % 2], group=f"g{i // 2}")
            fh.write(json.dumps(row) + "\n")
    return path


def run(args: list[str], log: Path, cmd: list[str] | None = None) -> tuple[float, float]:
    """Run ``curator ARGS`` (or ``cmd + ARGS``); return (peak RSS in MB, seconds). Raises if it fails."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen((cmd or curator_cmd()) + args, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"curator {' '.join(args)} failed ({proc.returncode}):\n{log.read_text()[-2000:]}")
    return usage.ru_maxrss * 1024 / 1e6, time.perf_counter() - start  # ru_maxrss is KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--search", default="flat", help="comma-separated --search types to measure (flat is the default)")
    ap.add_argument("--dim", type=int, default=None, help="projection dim (default: curator's, 8192)")
    ap.add_argument("--no-influence", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    kinds = [s for s in a.search.split(",") if s]
    common = ["--model", "tiny-random"] + (["--dim", str(a.dim)] if a.dim else [])
    with tempfile.TemporaryDirectory(prefix="curator-memory-") as tmp:
        root = Path(tmp)
        evals = write_rows(root / "eval.jsonl", 16, "eval", a.seed + 1)
        run(["-q", "index", str(evals), "--out", str(root / "eval"), *common], root / "eval.log")
        peak: dict[tuple[str, int], float] = {}
        print(f"{'command':10s} {'search':8s} {'rows':>7s} {'peak RSS MB':>12s} {'seconds':>8s}")
        for n in sizes:
            data = write_rows(root / f"c{n}.jsonl", n, "candidates", a.seed)
            for kind in kinds:
                store = root / f"train-{n}-{kind.replace(':', '_')}"
                rss, secs = run(["-q", "index", str(data), "--out", str(store), *common, "--search", kind], root / "index.log")
                peak[("index", n, kind)] = rss
                print(f"{'index':10s} {kind:8s} {n:7d} {rss:12.1f} {secs:8.1f}")
                if kind == kinds[0]:
                    rss, secs = run([str(store)], root / "old.log", [sys.executable, "-c", OLD_FINALIZE])
                    peak[("old finalize", n, "flat")] = rss
                    print(f"{'baseline: old finalize (no model)':30s} {n:7d} {rss:12.1f} {secs:8.1f}")
                if not a.no_influence:
                    rss, secs = run(["influence", "--train", str(store), "--eval", str(root / "eval"), "--out", str(root / "inf.parquet"), "--top-k", "5"], root / "influence.log")
                    peak[("influence", n, kind)] = rss
                    print(f"{'influence':10s} {kind:8s} {n:7d} {rss:12.1f} {secs:8.1f}")
        dim = a.dim or 8192
        lo, hi = sizes[0], sizes[-1]
        print(f"\ngrowth of peak RSS from {lo:,} to {hi:,} rows (a float32 copy of {hi:,} x {dim} vectors would be {hi * dim * 4 / 1e6:.0f} MB; target < 200 MB):")
        for cmd in ("index", "influence", "old finalize"):
            for kind in kinds:
                if (cmd, hi, kind) in peak:
                    print(f"  {cmd:12s} {kind:8s} {peak[(cmd, hi, kind)] - peak[(cmd, lo, kind)]:+8.1f} MB")


if __name__ == "__main__":
    main()
