"""Scale-out on torch.distributed: real torchrun ranks (gloo, CPU) writing one store.

The ranks are real processes started by torchrun (or by `curator index --nproc`, through
torchrun's own launcher); their logs go to files, never pipes (a full pipe deadlocks them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from curator.distributed.group import Group, PeerError
from curator.distributed.split import balanced_ranges
from curator.errors import InputError
from curator.influence.scoring import influence_scores, open_space, top_k
from curator.store.ranks import journals, read_journal
from curator.store.store import GradientStore
from tests.conftest import write_jsonl

BIN = Path(sys.executable).parent
COMMON = ["--model", "tiny-random", "--dim", "64"]


# ---------------------------------------------------------------------- the split, without processes


def test_balanced_ranges_exact() -> None:
    assert balanced_ranges([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert balanced_ranges([10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 11)]
    assert balanced_ranges([3, 1, 1, 1], 3) == [(0, 1), (1, 2), (2, 4)]  # cuts at running cost 2 and 4 of 6
    assert balanced_ranges([5], 3) == [(0, 0), (0, 1), (1, 1)]  # the middle rank is nearest to the item
    assert balanced_ranges([], 2) == [(0, 0), (0, 0)]
    assert balanced_ranges([0, 0, 0, 0], 2) == [(0, 2), (2, 4)]


def test_balanced_ranges_cover_in_order() -> None:
    rng = np.random.default_rng(0)
    for world in (1, 2, 3, 7):
        costs = rng.integers(1, 500, size=101).tolist()
        ranges = balanced_ranges(costs, world)
        assert ranges[0][0] == 0 and ranges[-1][1] == 101
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        shares = [sum(costs[lo:hi]) for lo, hi in ranges]
        assert max(shares) - min(shares) <= 2 * max(costs)  # balanced within two items
    with pytest.raises(ValueError):
        balanced_ranges([1], 0)


def test_group_of_one_runs_locally() -> None:
    g = Group()
    assert not g.active and g.gather({"a": 1}) == [{"a": 1}] and g.broadcast(3) == 3
    assert g.on_rank0(lambda: 7) == 7
    g.agree("settings", {"x": 1})
    with pytest.raises(InputError):
        g.on_rank0(lambda: (_ for _ in ()).throw(InputError("bad")))
    assert PeerError("m", 2).exit_code == 2 and PeerError("m", 2).quiet


# ---------------------------------------------------------------------- real ranks


def _rows(n: int) -> list[dict]:
    return [
        {"id": f"r{i:04d}", "prompt": f"Question {i}: what is {i} plus {i}?", "response": f"{i} and {i} make {2 * i}. " * (1 + i % 4) + f"The answer is {2 * i}.",
         "strategy": ["direct", "cot", "clarify"][i % 3], "task": ["a", "b"][i % 2], "group": f"g{i // 3}"}
        for i in range(n)
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    fh = log.open("w")
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)


def _torchrun(nproc: int, args: list[str]) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), "--no-python", str(BIN / "curator"), "-q", *args]


def _run(cmd: list[str], log: Path, timeout: float = 300) -> int:
    p = _start(cmd, log)
    try:
        return p.wait(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def _by_id(store: Path) -> dict[str, np.ndarray]:
    s = GradientStore.open(store)
    return dict(zip(s.ids(), s.vectors()))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One clean 1-rank store and one 2-rank torchrun store of the same 60 rows, and an eval store."""
    d = tmp_path_factory.mktemp("dist")
    data = write_jsonl(d / "cands.jsonl", _rows(60))
    evals = write_jsonl(d / "eval.jsonl", [{"id": f"e{j}", "prompt": f"Eval {j}: what is {j} + {j}?", "response": f"The answer is {2 * j}.", "task": ["a", "b"][j % 2]} for j in range(6)])
    assert _run([str(BIN / "curator"), "-q", "index", str(data), "--out", str(d / "one"), "--batch-size", "4", *COMMON], d / "one.log") == 0, (d / "one.log").read_text()
    assert _run([str(BIN / "curator"), "-q", "index", str(evals), "--out", str(d / "eval"), *COMMON], d / "eval.log") == 0
    code = _run(_torchrun(2, ["index", str(data), "--out", str(d / "two"), "--batch-size", "4", *COMMON]), d / "two.log")
    assert code == 0, (d / "two.log").read_text()
    return {"dir": d, "data": data, "one": d / "one", "two": d / "two", "eval": d / "eval", "log": d / "two.log"}


def test_two_ranks_equal_one(job: dict[str, Path]) -> None:
    one, two = GradientStore.open(job["one"]), GradientStore.open(job["two"])
    assert two.ids() == one.ids()  # same rows, in the same order: rank 0's share, then rank 1's
    assert two.n_rows == 60 and two.manifest["complete"] and len(set(two.ids())) == 60
    va, vb = one.vectors(), two.vectors()
    assert min(_cos(a, b) for a, b in zip(va, vb)) >= 0.9999
    assert two.manifest["folded"] == ["job-00000-rank-00000", "job-00000-rank-00001"]
    assert not journals(job["two"])  # folded and removed
    assert not list((job["two"] / "parts").glob("part-*-r*"))  # rolled up into the store's parts
    log = job["log"].read_text()
    assert log.count("indexed 60 candidates rows") == 1 and "on 2 ranks" in log  # rank 0 reports the job once


def test_two_ranks_same_influence_and_top_k(job: dict[str, Path]) -> None:
    t1 = influence_scores(open_space([job["one"]], [job["eval"]]))
    t2 = influence_scores(open_space([job["two"]], [job["eval"]]))
    cols = [c for c in t1.columns if c.startswith("influence")]
    assert list(t1["id"]) == list(t2["id"])
    np.testing.assert_allclose(t2[cols].to_numpy(float), t1[cols].to_numpy(float), atol=1e-6)
    k1 = top_k(open_space([job["one"]], [job["eval"]]), 5)
    k2 = top_k(open_space([job["two"]], [job["eval"]]), 5)
    assert [set(g["id"]) for _, g in k1.groupby("eval_id")] == [set(g["id"]) for _, g in k2.groupby("eval_id")]


def test_rerun_of_a_finished_job_adds_nothing(job: dict[str, Path], tmp_path: Path) -> None:
    before = json.loads((job["two"] / "manifest.json").read_text())
    code = _run(_torchrun(2, ["index", str(job["data"]), "--out", str(job["two"]), "--batch-size", "4", *COMMON]), tmp_path / "again.log")
    assert code == 0, (tmp_path / "again.log").read_text()
    after = json.loads((job["two"] / "manifest.json").read_text())
    assert after["rows"] == 60 and after["parts"] == before["parts"]
    assert "(0 new, 60 already there)" in (tmp_path / "again.log").read_text()


def _kill_rank_mid_run(tmp_path: Path, data: Path, out: Path, via_nproc: bool) -> tuple[int, str]:
    """Start a 2-rank job, SIGKILL rank 1 once it has committed some but not all of its rows."""
    args = ["index", str(data), "--out", str(out), "--batch-size", "1", *COMMON]
    cmd = [str(BIN / "curator"), *args, "--nproc", "2"] if via_nproc else _torchrun(2, args)
    log = tmp_path / "killed.log"
    p = _start(cmd, log)
    killed = False
    deadline = time.monotonic() + 240
    try:
        while p.poll() is None and time.monotonic() < deadline and not killed:
            for _, rank, f in journals(out):
                j = read_journal(f)
                if rank == 1 and j and 2 <= j["rows"] < j["held"]["rows"]:
                    os.kill(j["held"]["pid"], signal.SIGKILL)
                    killed = True
            time.sleep(0.005)
        code = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert killed, "rank 1 finished before it could be killed: " + log.read_text()[-2000:]
    return code, log.read_text()


@pytest.mark.parametrize("ranks_after", [1, 2])
def test_killed_rank_then_resume(job: dict[str, Path], tmp_path: Path, ranks_after: int) -> None:
    data = write_jsonl(tmp_path / "cands.jsonl", _rows(240))
    clean = tmp_path / "clean"
    assert _run([str(BIN / "curator"), "-q", "index", str(data), "--out", str(clean), "--batch-size", "8", *COMMON], tmp_path / "clean.log") == 0
    out = tmp_path / "store"
    code, log = _kill_rank_mid_run(tmp_path, data, out, via_nproc=ranks_after == 1)
    assert code != 0
    if ranks_after == 1:  # curator's own launcher: one line naming the rank and the rows it held
        line = [ln for ln in log.splitlines() if "error:" in ln]
        assert len(line) == 1, log
        assert "rank 1 of 2 died (SIGKILL" in line[0] and "holding rows 1" in line[0] and "of cands.jsonl" in line[0] and "committed)" in line[0], line
    else:  # bare torchrun: rank 0, stopped by torchrun, names the rank of its node that died
        line = [ln for ln in log.splitlines() if ln.startswith("error:")]
        assert len(line) == 1 and line[0].startswith("error: rank 1 of 2 died holding rows 1") and "of cands.jsonl" in line[0], log
    rerun = ([str(BIN / "curator"), "-q", "index", str(data), "--out", str(out), *COMMON] if ranks_after == 1
             else _torchrun(2, ["index", str(data), "--out", str(out), *COMMON]))
    assert _run(rerun, tmp_path / "rerun.log") == 0, (tmp_path / "rerun.log").read_text()
    assert "already there" in (tmp_path / "rerun.log").read_text()
    s = GradientStore.open(out)
    ids = s.ids()
    assert s.n_rows == 240 and len(ids) == 240 and len(set(ids)) == 240  # nothing missing, nothing twice
    got, want = _by_id(out), _by_id(clean)
    assert set(got) == set(want)
    assert min(_cos(got[i], want[i]) for i in want) >= 0.9999
    assert not journals(out) and s.manifest["complete"]
    listed = {p["name"] for p in s.manifest["parts"]}
    assert {f.stem for f in (out / "parts").glob("part-*")} == listed  # no stray files of the killed rank


def test_mismatched_settings_refused_before_any_write(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "cands.jsonl", _rows(8))
    out = tmp_path / "store"
    script = f'exec {BIN / "curator"} -q index {data} --out {out} --model tiny-random --dim $((64 + RANK))'
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python", "sh", "-c", script]
    code = _run(cmd, tmp_path / "log")
    log = (tmp_path / "log").read_text()
    assert code != 0
    errors = [ln for ln in log.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "rank 1 was started with different settings from rank 0" in errors[0] and "projection" in errors[0], log
    assert not (out / "manifest.json").exists()


def test_nproc_refused_under_torchrun_and_invalid(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "cands.jsonl", _rows(4))
    r = subprocess.run([str(BIN / "curator"), "index", str(data), "--out", str(tmp_path / "s"), "--nproc", "0", *COMMON], capture_output=True, text=True, env=_env())
    assert r.returncode == 2 and r.stderr.strip() == "error: --nproc 0 is invalid: use an integer >= 1"
    env = {**_env(), "WORLD_SIZE": "2", "RANK": "0"}
    r = subprocess.run([str(BIN / "curator"), "index", str(data), "--out", str(tmp_path / "s"), "--nproc", "2", *COMMON], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "leave it out when running under torchrun" in r.stderr


def test_align_two_ranks_equal_one(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "cands.jsonl", _rows(30))
    args = ["--model", "tiny-random", "--samples", "2", "--max-new-tokens", "8", "--metrics", "hidden,rouge-l,token-f1,perplexity,sappl"]
    assert _run([str(BIN / "curator"), "-q", "align", str(data), "--out", str(tmp_path / "one.parquet"), *args], tmp_path / "one.log") == 0
    assert _run(_torchrun(2, ["align", str(data), "--out", str(tmp_path / "two.parquet"), *args]), tmp_path / "two.log") == 0, (tmp_path / "two.log").read_text()
    import pandas as pd

    one, two = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "two.parquet")
    assert list(two.columns) == list(one.columns) and list(two["id"]) == list(one["id"])
    for col in ["hidden", "rouge-l", "token-f1", "perplexity", "sappl", "alignment"]:
        np.testing.assert_allclose(two[col].to_numpy(float), one[col].to_numpy(float), rtol=1e-5, atol=1e-6, err_msg=col)

    def entries(p: Path) -> dict:
        return {x["key"]: x["samples"] for x in map(json.loads, p.read_text().splitlines()[1:])}

    assert entries(tmp_path / "two.samples.jsonl") == entries(tmp_path / "one.samples.jsonl")  # one shared cache, as one process writes
    assert not list(tmp_path.glob("two.samples.rank-*"))
    log = (tmp_path / "two.log").read_text()
    assert log.count("scored 30 candidates in 10 prompt groups") == 1 and "samples: 10 groups generated, 0 reused" in log
    # a rerun samples nothing: every group comes from the merged cache
    assert _run(_torchrun(2, ["align", str(data), "--out", str(tmp_path / "two.parquet"), *args]), tmp_path / "again.log") == 0
    assert "samples: 0 groups generated, 10 reused" in (tmp_path / "again.log").read_text()


def test_library_calls_under_torchrun_share_one_group(tmp_path: Path) -> None:
    """A script under torchrun may index two stores in a row: the group stays open between them."""
    data = write_jsonl(tmp_path / "cands.jsonl", _rows(12))
    script = tmp_path / "two_stores.py"
    script.write_text(
        "import sys\n"
        "from curator.config import IndexConfig, ProjectionConfig\n"
        "from curator.influence.indexing import index_file\n"
        "c = IndexConfig(model='tiny-random', projection=ProjectionConfig(dim=64), batch_size=4)\n"
        "a = index_file(sys.argv[1], sys.argv[2] + '/a', c)\n"
        "b = index_file(sys.argv[1], sys.argv[2] + '/b', c, role='eval')\n"
        "print(f'rank {a.rank} of {a.world}: {a.rows_total} {b.rows_total} {a.rows_added} {b.rows_added}')\n"
    )
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", str(script), str(data), str(tmp_path)]
    assert _run(cmd, tmp_path / "log") == 0, (tmp_path / "log").read_text()
    log = (tmp_path / "log").read_text()
    assert "rank 0 of 2: 12 12 12 12" in log  # rank 0 reports the job; rank 1 its own share
    assert "rank 1 of 2: " in log
    assert GradientStore.open(tmp_path / "a").ids() == GradientStore.open(tmp_path / "b").ids() == [f"r{i:04d}" for i in range(12)]
    assert GradientStore.open(tmp_path / "b").manifest["role"] == "eval"


# ---------------------------------------------------------------------- journals, without processes


def _ident(dim: int = 8) -> dict:
    return {"role": "candidates", "model": {"spec": "x", "fingerprint": "fp"}, "lora": {"r": 8}, "projection": {"dim": dim, "seed": 0},
            "gradient": {"kind": "sgd", "max_length": 64, "checkpoint": None, "dtype": "fp32", "lr_weight": 1.0}}


def _unit(n: int, seed: int, dim: int = 8) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_journals_fold_once_in_rank_order_and_on_a_plain_resume(tmp_path: Path) -> None:
    store = GradientStore.create_or_resume(tmp_path / "s", _ident())
    job = store.new_job()
    w1 = store.rank_writer(job, 1, {"rows": 2, "first": 3, "last": 4, "source": "d.jsonl"})
    w0 = store.rank_writer(job, 0, {"rows": 2, "first": 1, "last": 2, "source": "d.jsonl"})
    w1.append([{"id": "c"}, {"id": "d"}], _unit(2, 1))
    w0.append([{"id": "a"}, {"id": "b"}], _unit(2, 0))
    assert store.ids() == [] and sorted(p.name for p in (tmp_path / "s" / "parts").glob("*.npy")) == ["part-00000-r0000-00000.npy", "part-00000-r0001-00000.npy"]
    store.close()
    # a plain 1-process run folds what the killed job committed, rank 0 first
    again = GradientStore.create_or_resume(tmp_path / "s", _ident())
    assert again.ids() == ["a", "b", "c", "d"] and again.n_rows == 4 and not journals(tmp_path / "s")
    np.testing.assert_allclose(again.vectors()[:2], _unit(2, 0), atol=1e-3)
    # a fold cut short after the manifest was written, before the journal was deleted, adds nothing
    (tmp_path / "s" / "ranks").mkdir(exist_ok=True)
    (tmp_path / "s" / "ranks" / "job-00000-rank-00001.json").write_text(json.dumps(w1.manifest))
    assert again.fold_journals() == 0 and again.n_rows == 4 and not journals(tmp_path / "s")
    again.close()


def test_a_journal_of_other_settings_is_refused(tmp_path: Path) -> None:
    store = GradientStore.create_or_resume(tmp_path / "s", _ident())
    w = store.rank_writer(store.new_job(), 1, {"rows": 1})
    w.append([{"id": "a"}], _unit(1, 0))
    w.manifest["projection"]["seed"] = 1
    w._write_manifest()
    from curator.errors import MismatchError

    with pytest.raises(MismatchError, match=r"rank 1's journal .* differ in projection"):
        store.fold_journals()
    store.close()


def test_what_a_dead_rank_held(tmp_path: Path) -> None:
    from curator.store.ranks import dead_ranks, rank_failure
    from tests.helpers import dead_pid
    import socket

    store = GradientStore.create_or_resume(tmp_path / "s", _ident())
    job = store.new_job()
    w = store.rank_writer(job, 1, {"rows": 50, "first": 51, "last": 100, "source": "cands.jsonl", "host": socket.gethostname(), "pid": dead_pid()})
    w.append([{"id": "a"}], _unit(1, 0))
    store.rank_writer(job, 0, {"rows": 50, "first": 1, "last": 50, "source": "cands.jsonl", "host": socket.gethostname(), "pid": os.getpid()})
    assert rank_failure(tmp_path / "s", 1) == "rows 51-100 of cands.jsonl (50 rows, 1 committed)"
    assert dead_ranks(tmp_path / "s", job, socket.gethostname()) == [(1, "rows 51-100 of cands.jsonl (50 rows, 1 committed)")]
    assert rank_failure(tmp_path / "s", 5) is None
    store.close()


def test_align_with_more_ranks_than_groups(tmp_path: Path) -> None:
    """3 ranks, 2 prompt groups: a rank with nothing to sample or score still joins the job."""
    data = write_jsonl(tmp_path / "cands.jsonl", _rows(6))  # groups g0 and g1
    args = ["--model", "tiny-random", "--samples", "2", "--max-new-tokens", "6", "--metrics", "rouge-l,perplexity"]
    assert _run([str(BIN / "curator"), "-q", "align", str(data), "--out", str(tmp_path / "one.parquet"), *args], tmp_path / "one.log") == 0
    assert _run(_torchrun(3, ["align", str(data), "--out", str(tmp_path / "three.parquet"), *args]), tmp_path / "three.log") == 0, (tmp_path / "three.log").read_text()
    import pandas as pd

    one, three = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "three.parquet")
    assert list(three["id"]) == list(one["id"]) and dict(three.dtypes) == dict(one.dtypes)
    for col in ["rouge-l", "perplexity", "alignment"]:
        np.testing.assert_allclose(three[col].to_numpy(float), one[col].to_numpy(float), rtol=1e-5, atol=1e-6, err_msg=col)
    assert "Warning" not in (tmp_path / "three.log").read_text()


def test_truncated_rows_are_counted_over_the_job(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "cands.jsonl", _rows(8))
    args = ["--max-length", "24", *COMMON]
    assert _run([str(BIN / "curator"), "-q", "index", str(data), "--out", str(tmp_path / "one"), *args], tmp_path / "one.log") == 0
    assert _run(_torchrun(2, ["index", str(data), "--out", str(tmp_path / "two"), *args]), tmp_path / "two.log") == 0, (tmp_path / "two.log").read_text()
    one = [ln for ln in (tmp_path / "one.log").read_text().splitlines() if "truncated to --max-length" in ln]
    two = [ln for ln in (tmp_path / "two.log").read_text().splitlines() if "truncated to --max-length" in ln]
    assert len(one) == 1 and two == one  # e.g. "8 row(s) truncated to --max-length 24 ..."
    assert GradientStore.open(tmp_path / "two").manifest["truncated"] == GradientStore.open(tmp_path / "one").manifest["truncated"] > 0
