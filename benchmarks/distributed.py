"""Scale-out overhead: `curator index` on 1 rank against N ranks under torchrun, at equal total threads.

Each configuration indexes the same generated rows into a fresh store: 1 rank with T threads,
then N ranks with T/N threads each (gloo, on this one machine; ``--nproc-per-node N`` of a real
torchrun). The job's own clock is read from rank 0 (``IndexResult.seconds`` and ``phases``:
agreeing on the settings, planning the split, featurizing its share, waiting at the barrier,
folding the journals and building the index), so process start and model loading, the same for
every configuration, are left out. It prints rows/s for each and the coordination cost: the
job's seconds outside rank 0's featurizing, less what one rank spends outside its own (the
final commit), as a share of the job. Target: <= 10% overhead.

    python benchmarks/distributed.py [--model tiny-random] [--rows 512] [--nproc 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys
import torch
torch.set_num_threads(int(sys.argv[4]))
from curator.config import IndexConfig, ProjectionConfig
from curator.influence.indexing import index_file
r = index_file(sys.argv[1], sys.argv[2], IndexConfig(model=sys.argv[3], projection=ProjectionConfig(dim=int(sys.argv[5])), batch_size=int(sys.argv[6])))
if r.rank == 0:
    print("RESULT " + json.dumps({"seconds": r.seconds, "rows": r.rows_added, "phases": r.phases, "world": r.world}))
"""
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon".split()


def write_rows(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            prompt = " ".join(rng.choices(WORDS, k=rng.randint(8, 40)))
            response = " ".join(rng.choices(WORDS, k=rng.randint(8, 120)))
            fh.write(json.dumps({"id": f"r{i}", "prompt": prompt, "response": response, "strategy": rng.choice(["direct", "cot"]), "task": "t", "group": f"g{i}"}) + "\n")
    return path


def run(nproc: int, threads: int, data: Path, out: Path, a: argparse.Namespace, log: Path) -> dict:
    child = [a.model, str(threads), str(a.dim), str(a.batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-c", CHILD, str(data), str(out), *child]
    else:
        script = log.with_suffix(".py")
        script.write_text(CHILD)
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", str(nproc), str(script), str(data), str(out), *child]
    with log.open("w") as fh:  # ranks' output to a file, never a pipe
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    text = log.read_text()
    if code:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{text[-3000:]}")
    return json.loads([ln for ln in text.splitlines() if ln.startswith("RESULT ")][-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="total threads, split evenly across the ranks")
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="curator-distributed-") as tmp:
        root = Path(tmp)
        data = write_rows(root / "rows.jsonl", a.rows, a.seed)
        print(f"{a.rows} generated rows, model {a.model}, dim {a.dim}, batch {a.batch_size}; {a.threads} threads in all")
        print(f"{'ranks':>5s} {'threads/rank':>12s} {'seconds':>8s} {'rows/s':>8s}  phases on rank 0 (s)")
        res = {}
        for nproc in (1, a.nproc):
            r = run(nproc, max(1, a.threads // nproc), data, root / f"store-{nproc}", a, root / f"run-{nproc}.log")
            res[nproc] = r
            phases = " ".join(f"{k} {v:.2f}" for k, v in (r["phases"] or {}).items())
            print(f"{nproc:5d} {max(1, a.threads // nproc):12d} {r['seconds']:8.2f} {a.rows / r['seconds']:8.1f}  {phases}")
        one, many = res[1], res[a.nproc]
        coord = (many["seconds"] - many["phases"]["featurize"]) - (one["seconds"] - one["phases"]["featurize"])
        print(f"\n{a.nproc} ranks vs 1 rank: {one['seconds'] / many['seconds']:.2f}x the rows/s")
        print(f"coordination on {a.nproc} ranks (agree, plan, wait, commit, beyond 1 rank's own commit): {coord:.2f}s = {100 * coord / many['seconds']:.1f}% of the job (target <= 10%)")
        print(f"  of which waiting for the slowest rank: {many['phases']['wait']:.2f}s; committing (fold, roll-up, index): {many['phases']['commit']:.2f}s")


if __name__ == "__main__":
    main()
