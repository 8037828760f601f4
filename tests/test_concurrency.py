"""A store while a real `curator index` process writes it: a second writer is refused, naming the
holder; readers (`influence`, `study`) work and see a consistent prefix of the rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from curator.cli.main import cli
from curator.config import GradientConfig, IndexConfig, ProjectionConfig
from curator.errors import InputError
from curator.influence.indexing import index_file
from curator.influence.scoring import influence_scores, open_space
from tests.conftest import write_jsonl
from tests.test_crash import candidate_rows

REPO = Path(__file__).resolve().parents[1]
CURATOR_BIN = REPO / ".venv" / "bin" / "curator"
ARGS = ["--model", "tiny-random", "--dim", "128", "--batch-size", "2", "--max-length", "64"]  # many small commits: reads land mid-write


def eval_rows() -> list[dict]:
    return [{"id": f"e{i}", "prompt": f"Question {i}: what is {i} plus {i % 7}?", "response": f"The answer is {i + i % 7}.", "task": f"t{i % 3}"} for i in range(6)]


def start_writer(data: Path, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([str(CURATOR_BIN), "-q", "index", str(data), "--out", str(out), *ARGS], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "manifest.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the writer never created its store"
        time.sleep(0.05)
    return proc


@pytest.fixture
def stores(tmp_path: Path) -> dict[str, Path]:
    data = write_jsonl(tmp_path / "cands.jsonl", candidate_rows(160))
    ev = write_jsonl(tmp_path / "eval.jsonl", eval_rows())
    cfg = IndexConfig(model="tiny-random", projection=ProjectionConfig(dim=128), gradient=GradientConfig(max_length=64), batch_size=4)
    index_file(ev, tmp_path / "eval", cfg)
    return {"data": data, "eval": tmp_path / "eval", "train": tmp_path / "train", "root": tmp_path}


def test_a_second_index_is_refused_naming_the_running_one(stores: dict[str, Path]) -> None:
    proc = start_writer(stores["data"], stores["train"])
    try:
        r = CliRunner().invoke(cli, ["-q", "index", str(stores["data"]), "--out", str(stores["train"]), *ARGS])
        still_running = proc.poll() is None
    finally:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    if still_running:  # (the writer may have finished first on a fast machine: then there was nothing to refuse)
        assert r.exit_code == 1, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.output
        assert f"the store is being written by pid {proc.pid} on host {socket.gethostname()}" in lines[0]
        assert "wait for it to finish, or stop it, then rerun" in lines[0]
    again = CliRunner().invoke(cli, ["-q", "index", str(stores["data"]), "--out", str(stores["train"]), *ARGS])
    assert again.exit_code == 0 and "(0 new, 160 already there)" in again.output
    assert json.loads((stores["train"] / "writer.lock").read_text() or "null") is None  # released, no holder named


def test_readers_see_a_consistent_prefix_while_a_writer_appends(stores: dict[str, Path]) -> None:
    proc = start_writer(stores["data"], stores["train"])
    snapshots: list[pd.DataFrame] = []
    cli_runs = 0
    try:
        while proc.poll() is None:
            try:
                snapshots.append(influence_scores(open_space([stores["train"]], [stores["eval"]])))
            except InputError as exc:  # nothing committed yet
                assert "the store is empty" in str(exc)
            if snapshots and cli_runs < 2 and proc.poll() is None:  # the commands too, mid-write
                out = stores["root"] / f"study-{cli_runs}"
                r = CliRunner().invoke(cli, ["-q", "study", "--train", str(stores["train"]), "--eval", str(stores["eval"]), "--out", str(out), "--n-boot", "50"])
                assert r.exit_code == 0, r.output
                r = CliRunner().invoke(cli, ["-q", "influence", "--train", str(stores["train"]), "--eval", str(stores["eval"]), "--out", str(out / "inf.parquet")])
                assert r.exit_code == 0, r.output
                snapshots.append(pd.read_parquet(out / "inf.parquet"))
                cli_runs += 1
    finally:
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    final = influence_scores(open_space([stores["train"]], [stores["eval"]]))
    assert len(final) == 160
    partial = [s for s in snapshots if 0 < len(s) < 160]
    assert partial, "no read happened while the writer was mid-way"
    score_cols = [c for c in final.columns if c.startswith("influence")]
    for snap in snapshots:
        n = len(snap)
        assert n % 2 == 0, f"a read saw {n} rows: not a whole number of committed batches"
        assert list(snap["id"]) == list(final["id"][:n]), "a read saw rows that are not a prefix of the store"
        np.testing.assert_allclose(snap[score_cols].to_numpy(float), final[score_cols].to_numpy(float)[:n], atol=1e-6)
