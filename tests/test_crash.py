"""Crash safety, done for real: SIGKILL long commands at random moments, rerun, compare with a clean run.

Each trial runs a command (in a child process forked from a server that has already imported
curator, so a trial costs its work and not its imports; see tests/crash_child.py), kills it with
SIGKILL at a moment drawn from a seeded generator, reruns the same command until it finishes,
and checks the result against an uninterrupted run: for `index`, exactly N rows with unique ids
and every vector bit-identical; for `align`, the same scores table and sample cache; for
`export`, byte-identical files. The kill moments cover the middle of a batch (timer), a file
write before its fsync, the moment before an atomic rename and the moment after it (a part in
place but the manifest not yet listing it). A few `index` trials kill the real `curator` console
script from outside. Set CURATOR_CRASH_SEED to replay another seed; failures name the trial.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from curator.store.store import GradientStore
from tests import crash_child
from tests.conftest import write_jsonl

pytestmark = pytest.mark.crash
REPO = Path(__file__).resolve().parents[1]
CURATOR_BIN = REPO / ".venv" / "bin" / "curator"
SEED = int(os.environ.get("CURATOR_CRASH_SEED", "0"))
N_ROWS = 200
INDEX_ARGS = ["--model", "tiny-random", "--dim", "256", "--batch-size", "16", "--max-length", "64", "--tokens-per-batch", "4096"]

_ctx: Any = None


def _mp() -> Any:
    global _ctx
    if _ctx is None:
        _ctx = multiprocessing.get_context("forkserver")
        _ctx.set_forkserver_preload(["tests.crash_child"])
    return _ctx


def run_child(mode: str, n: float, argv: list[str], count_file: str | None = None, timeout: float = 300) -> int:
    """Run ``curator argv`` in a child with the kill armed; its exit code (-9 when killed)."""
    p = _mp().Process(target=crash_child.run, args=(mode, n, ["-q", *argv], count_file))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        raise AssertionError(f"child {argv} did not finish in {timeout}s")
    return int(p.exitcode)


def finish(argv: list[str], what: str) -> None:
    """Rerun until the command succeeds (a rerun is never killed); it must within 3 tries."""
    for _ in range(3):
        code = run_child("timer", 1e9, argv)
        if code == 0:
            return
    raise AssertionError(f"{what}: the rerun after the crash kept failing (exit {code})")


def candidate_rows(n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        q = f"Question {i // 2}: what is {i // 2} plus {i % 7}?"
        body = " ".join(f"Step {j}: add {j}." for j in range(i % 3)) + f" The answer is {i // 2 + i % 7}."
        rows.append({"id": f"r{i:04d}", "prompt": q, "response": body, "strategy": ["direct", "cot"][i % 2], "task": f"t{i % 3}", "group": f"g{i // 2}"})
    return rows


def store_state(path: Path) -> dict[str, np.ndarray]:
    store = GradientStore.open(path)
    ids = [str(i) for i in store.rows()["id"]]
    vecs = store.vectors()
    assert store.manifest["complete"], f"{path}: store not marked complete"
    assert len(ids) == len(set(ids)), f"{path}: duplicate ids ({len(ids)} rows, {len(set(ids))} unique)"
    assert store.index().ntotal == len(ids)
    return {i: v for i, v in zip(ids, vecs)}


def stray_temp_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*.tmp"))


@pytest.fixture(scope="module")
def index_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The data, the clean run's vectors, its duration and its number of atomic renames."""
    root = tmp_path_factory.mktemp("crash-index")
    data = write_jsonl(root / "cands.jsonl", candidate_rows(N_ROWS))
    count = root / "renames.txt"
    start = time.perf_counter()
    assert run_child("count", 0, ["index", str(data), "--out", str(root / "clean"), *INDEX_ARGS], str(count)) == 0
    took = time.perf_counter() - start
    clean = store_state(root / "clean")
    assert len(clean) == N_ROWS
    return {"root": root, "data": data, "clean": clean, "seconds": took, "renames": int(count.read_text())}


def index_trials(rng: random.Random, renames: int, seconds: float) -> list[tuple[str, float]]:
    """24 seeded kill moments: 8 on a timer, and 16 spread over writes, renames and manifest updates."""
    trials: list[tuple[str, float]] = [("timer", round(rng.uniform(0.05, 0.85) * seconds, 3)) for _ in range(8)]
    for mode in ("before-fsync", "before-replace", "after-replace"):
        trials += [(mode, rng.randint(1, renames)) for _ in range(5)]
    trials.append(("after-replace", renames - 1))  # every batch committed, the store not yet marked complete
    return trials


def check_index_trial(case: dict[str, Any], out: Path, label: str) -> None:
    got = store_state(out)
    assert sorted(got) == sorted(case["clean"]), f"{label}: {len(got)} rows, expected the {N_ROWS} ids of the clean run"
    differ = [i for i in got if not np.array_equal(got[i], case["clean"][i])]
    assert not differ, f"{label}: {len(differ)} vector(s) differ from the uninterrupted run, e.g. {differ[0]}"
    assert not stray_temp_files(out), f"{label}: temp files left behind: {stray_temp_files(out)}"


def test_index_survives_sigkill_anywhere(index_case: dict[str, Any]) -> None:
    rng = random.Random(SEED)
    trials = index_trials(rng, index_case["renames"], index_case["seconds"])
    killed = 0
    for t, (mode, n) in enumerate(trials):
        label = f"index trial {t} (CURATOR_CRASH_SEED={SEED}, kill {mode} {n})"
        out = index_case["root"] / f"trial-{t}"
        argv = ["index", str(index_case["data"]), "--out", str(out), *INDEX_ARGS]
        code = run_child(mode, n, argv)
        killed += code == -9
        assert code in (0, -9), f"{label}: exit {code}"
        finish(argv, label)
        check_index_trial(index_case, out, label)
    assert killed >= 20, f"only {killed} of {len(trials)} trials were killed before finishing"


def test_index_console_script_killed_from_outside(index_case: dict[str, Any]) -> None:
    """The real `curator index` process, SIGKILLed by another process at a random moment, then rerun."""
    rng = random.Random(SEED + 1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for t in range(3):
        out = index_case["root"] / f"script-{t}"
        argv = [str(CURATOR_BIN), "-q", "index", str(index_case["data"]), "--out", str(out), *INDEX_ARGS]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # after the imports (the store appears), at a random point of the work
        deadline = time.monotonic() + 120
        while not (out / "manifest.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.8) * index_case["seconds"])
        proc.kill()
        proc.wait()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        check_index_trial(index_case, out, f"console-script trial {t} (CURATOR_CRASH_SEED={SEED})")


def test_align_sample_cache_survives_sigkill(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "cands.jsonl", candidate_rows(24))
    args = ["--model", "tiny-random", "--samples", "2", "--max-new-tokens", "12", "--sample-batch-size", "2", "--metrics", "rouge-l,token-f1,perplexity"]
    count = tmp_path / "renames.txt"
    start = time.perf_counter()
    assert run_child("count", 0, ["align", str(data), "--out", str(tmp_path / "clean.parquet"), *args], str(count)) == 0
    took = time.perf_counter() - start
    clean = pd.read_parquet(tmp_path / "clean.parquet")
    clean_samples = (tmp_path / "clean.samples.jsonl").read_text()
    rng = random.Random(SEED + 2)
    trials = [("timer", round(rng.uniform(0.05, 1.0) * took, 3)) for _ in range(4)] + [("before-fsync", rng.randint(1, 12)) for _ in range(2)]
    for t, (mode, n) in enumerate(trials):
        label = f"align trial {t} (CURATOR_CRASH_SEED={SEED}, kill {mode} {n})"
        out = tmp_path / f"trial-{t}.parquet"
        argv = ["align", str(data), "--out", str(out), *args]
        assert run_child(mode, n, argv) in (0, -9), label
        finish(argv, label)
        pd.testing.assert_frame_equal(pd.read_parquet(out), clean, obj=label)
        samples = out.with_name(f"trial-{t}.samples.jsonl").read_text()
        assert sorted(samples.splitlines()) == sorted(clean_samples.splitlines()), f"{label}: sample cache differs from the clean run's"
        assert not stray_temp_files(tmp_path), f"{label}: temp files left behind"


def test_export_survives_sigkill(tmp_path: Path) -> None:
    from tests.test_export import pulled_rows

    pulled = write_jsonl(tmp_path / "pulled.jsonl", pulled_rows())
    rng = random.Random(SEED + 3)
    for fmt, name in (("sft", "sft.jsonl"), ("dpo", "dpo.parquet"), ("dpo", "dpo-dir")):
        count = tmp_path / "renames.txt"
        clean_out = tmp_path / f"clean-{name}"
        start = time.perf_counter()
        assert run_child("count", 0, ["export", str(pulled), "--format", fmt, "--out", str(clean_out)], str(count)) == 0
        took = time.perf_counter() - start
        renames = int(count.read_text())
        trials = [(mode, n) for n in range(1, renames + 1) for mode in ("before-replace", "after-replace")]
        trials += [("before-fsync", n) for n in range(1, renames + 4)] + [("timer", round(rng.uniform(0.2, 1.0) * took, 3)) for _ in range(2)]
        for t, (mode, n) in enumerate(trials):
            label = f"export {name} trial {t} (kill {mode} {n}; {renames} renames in a clean run)"
            out = tmp_path / f"t{t}-{name}"
            argv = ["export", str(pulled), "--format", fmt, "--out", str(out)]
            assert run_child(mode, n, argv) in (0, -9), label
            finish(argv, label)
            assert export_result(out) == export_result(clean_out), f"{label}: output differs from the clean run's"
        assert not stray_temp_files(tmp_path), f"export {name} left temp files behind: {stray_temp_files(tmp_path)}"
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], f"export {name} left hidden temp folders behind"


def export_result(out: Path) -> tuple[Any, str]:
    """An export's rows and its card, with the run-specific parts of the card (time, output name) blanked."""
    import datasets

    from curator.curation.export import card_path

    if out.is_dir():
        rows: Any = datasets.load_from_disk(str(out)).to_list()
    else:
        rows = out.read_bytes()
    card = card_path(out).read_text(encoding="utf-8").replace(out.name, "OUT")
    card = "\n".join(line for line in card.splitlines() if "`curator export --format" not in line)
    return rows, card


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
