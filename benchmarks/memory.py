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

``--ivf-build ROWS`` measures instead what building an approximate index over a big store costs
in memory: a store of ROWS synthetic unit vectors (``--ivf-dim``, default 1024) is written once,
then each child process builds ``--ivf-search`` (default ivfpq) over it and reports how far its
RSS grew above what it held once the index was trained (peak RSS is reset there through
/proc/self/clear_refs). (a) curator's out-of-core build (shards added with global row numbers,
merged into on-disk inverted lists) against (b) the same trained index filled in memory. Target
for IVF-PQ at 1M rows: (a) grows < 300 MB.

    python benchmarks/memory.py --ivf-build 1000000 [--ivf-dim 1024] [--ivf-search ivfpq,ivf]
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


IVF_CHILD = """
import json, sys, time
import numpy as np
import torch  # the scans convert float16 with torch: loaded and warmed before the measurement, as in `curator index`
torch.from_numpy(np.ones((64, 64), np.float16)).float().sum()
from curator.store import search
from curator.store.scan import scan
from curator.store.store import GradientStore

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")

store, kind, mode = GradientStore.open(sys.argv[1]), sys.argv[2], sys.argv[3]
seen = {}
on_disk = search._build_on_disk

def measured(index, src, path):
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS: the trained index is held
    seen["trained"] = status("VmRSS")
    t = time.perf_counter()
    if mode == "on-disk":
        out = on_disk(index, src, path)
    else:  # the baseline: the same trained index filled in memory
        for lo, chunk in scan([src], [1.0], search.SHARD_BYTES):
            x = chunk.numpy()
            index.add_with_ids(x, np.arange(lo, lo + len(x), dtype=np.int64))
        out = {}
    seen["peak"], seen["fill_s"] = status("VmHWM"), time.perf_counter() - t
    return out

search._build_on_disk = measured
store.request_search(kind)
t = time.perf_counter()
entry = store.finalize()
print(json.dumps({**seen, "total_s": time.perf_counter() - t, "params": entry.get("params"), "bytes_per_example": entry.get("bytes_per_example")}))
"""


def ivf_build(rows: int, dim: int, kinds: list[str], seed: int) -> None:
    """Peak RSS growth above the trained index while filling an IVF index over ROWS stored rows."""
    import numpy as np

    from curator.store.store import GradientStore

    with tempfile.TemporaryDirectory(prefix="curator-ivf-memory-") as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(seed)
        centers = rng.normal(size=(1000, dim)).astype(np.float32)
        ident = {"role": "candidates", "model": {"spec": "synthetic", "fingerprint": "synthetic"}, "lora": {}, "projection": {"dim": dim, "seed": 0},
                 "gradient": {"kind": "sgd", "max_length": 0, "checkpoint": None, "dtype": "fp32", "lr_weight": 1.0}}
        t = time.perf_counter()
        for kind in kinds:
            store = GradientStore.create_or_resume(root / kind.replace(":", "_"), ident)
            for lo in range(0, rows, 100_000):
                n = min(100_000, rows - lo)
                x = centers[rng.integers(0, len(centers), n)] + rng.normal(scale=0.5, size=(n, dim)).astype(np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                store.append([{"id": f"r{lo + i}", "strategy": "s", "task": "t", "group": f"g{lo + i}"} for i in range(n)], x)
            store.close()
        print(f"{len(kinds)} store(s) of {rows:,} x {dim} float16 vectors written in {time.perf_counter() - t:.0f}s ({rows * dim * 2 / 2**30:.2f} GiB each)")
        print(f"{'search':8s} {'build':9s} {'RSS trained MB':>15s} {'peak MB':>9s} {'growth MB':>10s} {'fill s':>7s} {'B/example':>10s}")
        for kind in kinds:
            store_dir = root / kind.replace(":", "_")
            grown = {}
            for mode in ("on-disk", "in-memory"):
                r = subprocess.run([sys.executable, "-c", IVF_CHILD, str(store_dir), kind, mode], capture_output=True, text=True)
                if r.returncode:
                    print(f"{kind} {mode} failed: {r.stderr[-2000:]}")
                    continue
                m = json.loads(r.stdout.strip().splitlines()[-1])
                grown[mode] = m["peak"] - m["trained"]
                print(f"{kind:8s} {mode:9s} {m['trained']:15.1f} {m['peak']:9.1f} {grown[mode]:+10.1f} {m['fill_s']:7.1f} {m['bytes_per_example'] or 0:10.1f}  {m['params']}")
            if len(grown) == 2:
                print(f"  {kind}: out-of-core growth {grown['on-disk']:.0f} MB (target < 300 MB) against {grown['in-memory']:.0f} MB in memory")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ivf-build", type=int, default=None, metavar="ROWS", help="measure building an IVF index over ROWS stored rows instead")
    ap.add_argument("--ivf-dim", type=int, default=1024)
    ap.add_argument("--ivf-search", default="ivfpq")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--search", default="flat", help="comma-separated --search types to measure (flat is the default)")
    ap.add_argument("--dim", type=int, default=None, help="projection dim (default: curator's, 8192)")
    ap.add_argument("--no-influence", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.ivf_build:
        ivf_build(a.ivf_build, a.ivf_dim, [k for k in a.ivf_search.split(",") if k], a.seed)
        return
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
