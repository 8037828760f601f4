"""Tests for the `curator` command: help, error rendering and exit codes, and a real end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from curator.cli.main import cli
from curator.store.store import GradientStore

REPO = Path(__file__).resolve().parents[1]
CURATOR_BIN = REPO / ".venv" / "bin" / "curator"
MODEL = ["--model", "tiny-random"]
DIM = ["--dim", "256"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def candidate_rows() -> list[dict[str, Any]]:
    """3 groups × 2 strategies; groups q0, q2 on task a, q1 on task b."""
    rows = []
    for i, task in enumerate(["a", "b", "a"]):
        q = f"Question {i} about {task}: what is {i} + {i}?"
        rows.append({"id": f"q{i}-direct", "prompt": q, "response": f"The answer is {2 * i}.", "strategy": "direct", "task": task, "group": f"q{i}"})
        rows.append({"id": f"q{i}-cot", "prompt": q, "response": f"{i} plus {i} makes {2 * i}, so {2 * i}.", "strategy": "cot", "task": task, "group": f"q{i}"})
    return rows


def eval_rows() -> list[dict[str, Any]]:
    return [
        {"id": f"e{j}", "prompt": f"Eval {j} on {task}: what is {j} + 1?", "response": f"It is {j + 1}.", "task": task}
        for j, task in enumerate(["a", "a", "b"])
    ]


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, args, env=env)


def assert_one_error_line(result: Result, *needles: str) -> str:
    """Exit code 2, stderr is exactly one line 'error: ...' holding every needle, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- help


def test_group_help_lists_commands_and_version() -> None:
    r = invoke(["--help"])
    assert r.exit_code == 0
    for cmd in ("index", "influence", "study", "warmup", "demo"):
        assert cmd in r.output
    assert "--quiet" in r.output and "--version" in r.output
    v = invoke(["--version"])
    assert v.exit_code == 0 and v.output.strip() == "curator, version 0.1.0"


@pytest.mark.parametrize(
    "cmd, options",
    [
        ("index", ["--out", "--as", "--model", "--kind", "--checkpoint", "--dim", "--seed", "--max-length", "--batch-size", "--lora-r", "--lora-targets"]),
        ("influence", ["--train", "--eval", "--out", "--top-k", "--top-k-out"]),
        ("study", ["--train", "--eval", "--out", "--baseline", "--n-boot", "--seed"]),
        ("warmup", ["--out", "--model", "--fraction", "--epochs", "--lr", "--batch-size", "--lora-alpha"]),
        ("demo", ["--out", "--model", "--dim", "--tasks", "--probes"]),
    ],
)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_command_help(cmd: str, options: list[str], flag: str) -> None:
    r = invoke([cmd, flag])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"Usage: cli {cmd} ") or r.output.startswith(f"Usage: curator {cmd} ")
    for opt in options:
        assert opt in r.output, opt


def test_help_in_a_real_subprocess() -> None:
    p = subprocess.run([sys.executable, "-m", "curator.cli.main", "index", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Usage: curator index [OPTIONS] DATA")
    assert "--max-length" in p.stdout and "--dim" in p.stdout


# --------------------------------------------------------------------------- input errors


def test_index_row_missing_response(tmp_path: Path) -> None:
    rows = candidate_rows()
    del rows[2]["response"]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "store"
    r = invoke(["index", str(data), "--out", str(out), *MODEL, *DIM])
    assert_one_error_line(r, str(data), "line 3", "missing field 'response'")
    # nothing half-written: no store directory at all
    assert not out.exists()
    # after fixing the input, the rerun into the same --out succeeds
    write_jsonl(data, candidate_rows())
    ok = invoke(["-q", "index", str(data), "--out", str(out), *MODEL, *DIM])
    assert ok.exit_code == 0, ok.output
    assert f"indexed 6 candidates rows into {out} (6 new, 0 already there)" in ok.stdout
    assert GradientStore.open(out).n_rows == 6


def test_index_duplicate_id(tmp_path: Path) -> None:
    rows = candidate_rows()
    rows[4]["id"] = rows[1]["id"]
    data = write_jsonl(tmp_path / "dup.jsonl", rows)
    r = invoke(["index", str(data), "--out", str(tmp_path / "s"), *MODEL])
    assert_one_error_line(r, str(data), "line 5", "duplicate id 'q0-cot'", "first at line 2")
    assert not (tmp_path / "s").exists()


def test_index_unsupported_suffix(tmp_path: Path) -> None:
    data = tmp_path / "rows.txt"
    data.write_text("prompt response\n")
    r = invoke(["index", str(data), "--out", str(tmp_path / "s"), *MODEL])
    assert_one_error_line(r, str(data), "unsupported file type '.txt'")


def test_index_missing_data_file(tmp_path: Path) -> None:
    r = invoke(["index", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "s"), *MODEL])
    assert_one_error_line(r, "nope.jsonl", "no such file or directory")


def test_index_dim_zero(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", candidate_rows())
    r = invoke(["index", str(data), "--out", str(tmp_path / "s"), *MODEL, "--dim", "0"])
    assert_one_error_line(r, "dim=0", "--dim")
    assert not (tmp_path / "s").exists()


def test_index_adam_without_checkpoint(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", candidate_rows())
    r = invoke(["index", str(data), "--out", str(tmp_path / "s"), *MODEL, "--kind", "adam"])
    assert_one_error_line(r, "'adam'", "--checkpoint")


def test_index_max_length_too_small(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", candidate_rows())
    r = invoke(["index", str(data), "--out", str(tmp_path / "s"), *MODEL, "--max-length", "4"])
    assert_one_error_line(r, "max_length=4", "--max-length")


def test_index_missing_model_folder(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", candidate_rows())
    missing = tmp_path / "no-such-model"
    r = invoke(["index", str(data), "--out", str(tmp_path / "s"), "--model", str(missing)])
    assert_one_error_line(r, str(missing), "does not exist")
    assert not (tmp_path / "s").exists()


def test_index_folder_without_config(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", candidate_rows())
    folder = tmp_path / "empty-model"
    folder.mkdir()
    r = invoke(["index", str(data), "--out", str(tmp_path / "s"), "--model", str(folder)])
    assert_one_error_line(r, str(folder), "no config.json")


def test_index_hub_id_while_offline(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", candidate_rows())
    r = invoke(["index", str(data), "--out", str(tmp_path / "s"), "--model", "no-such-org/no-such-model"], env={"HF_HUB_OFFLINE": "1"})
    assert_one_error_line(r, "'no-such-org/no-such-model'", "HF_HUB_OFFLINE=1", "local model folder")


def test_index_out_is_a_non_store_directory(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", candidate_rows())
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = invoke(["-q", "index", str(data), "--out", str(out), *MODEL, *DIM])
    assert_one_error_line(r, str(out), "not a gradient store")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_bad_input_in_a_real_subprocess(tmp_path: Path) -> None:
    rows = candidate_rows()
    del rows[0]["response"]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    exe = [str(CURATOR_BIN)] if CURATOR_BIN.exists() else [sys.executable, "-m", "curator.cli.main"]
    p = subprocess.run([*exe, "index", str(data), "--out", str(tmp_path / "s"), *MODEL], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"{data}: line 1: missing field 'response'" in lines[0]
    assert p.stdout == ""


def test_hub_offline_in_a_real_subprocess(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", candidate_rows())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "curator.cli.main", "index", str(data), "--out", str(tmp_path / "s"), "--model", "no-such-org/no-such-model"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model 'no-such-org/no-such-model'")
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Candidate and eval stores built through the CLI with tiny-random, dim 256."""
    d = tmp_path_factory.mktemp("e2e")
    cands = write_jsonl(d / "cands.jsonl", candidate_rows())
    evals = write_jsonl(d / "eval.jsonl", eval_rows())
    r1 = invoke(["-q", "index", str(cands), "--out", str(d / "train"), *MODEL, *DIM, "--batch-size", "4"])
    assert r1.exit_code == 0, r1.output
    assert f"indexed 6 candidates rows into {d / 'train'} (6 new, 0 already there)" in r1.stdout
    r2 = invoke(["-q", "index", str(evals), "--out", str(d / "eval"), *MODEL, *DIM])
    assert r2.exit_code == 0, r2.output
    assert f"indexed 3 eval rows into {d / 'eval'} (3 new, 0 already there)" in r2.stdout
    return {"dir": d, "cands": cands, "evals": evals, "train": d / "train", "eval": d / "eval"}


def test_stores_hold_unit_vectors_and_rows(stores: dict[str, Path]) -> None:
    t = GradientStore.open(stores["train"])
    assert t.manifest["role"] == "candidates" and t.manifest["complete"] is True
    assert t.manifest["projection"]["dim"] == 256
    # 6 rows committed in batches of 4 (parts 0 and 1), rolled up into one part (2) at finalize
    assert [(p["name"], p["rows"]) for p in t.manifest["parts"]] == [("part-00002", 6)]
    assert sorted(f.name for f in (stores["train"] / "parts").iterdir()) == ["part-00002.npy", "part-00002.parquet"]
    assert t.ids() == [r["id"] for r in candidate_rows()]
    v = t.vectors()
    assert v.shape == (6, 256)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=2e-3)
    e = GradientStore.open(stores["eval"])
    assert e.manifest["role"] == "eval" and e.ids() == ["e0", "e1", "e2"]
    assert list(e.rows()["task"]) == ["a", "a", "b"]


def test_rerun_index_adds_nothing(stores: dict[str, Path]) -> None:
    before = json.loads((stores["train"] / "manifest.json").read_text())
    r = invoke(["-q", "index", str(stores["cands"]), "--out", str(stores["train"]), *MODEL, *DIM, "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    assert "(0 new, 6 already there)" in r.stdout
    after = json.loads((stores["train"] / "manifest.json").read_text())
    assert after["rows"] == 6 and after["parts"] == before["parts"]


def test_rerun_with_other_settings_is_refused(stores: dict[str, Path]) -> None:
    r = invoke(["-q", "index", str(stores["cands"]), "--out", str(stores["train"]), *MODEL, "--dim", "128"])
    assert_one_error_line(r, f"existing store {stores['train']}", "projection", '"dim": 256', '"dim": 128')
    assert GradientStore.open(stores["train"]).manifest["projection"]["dim"] == 256


def test_influence_table_and_top_k(stores: dict[str, Path]) -> None:
    out = stores["dir"] / "x.csv"
    r = invoke(["influence", "--train", str(stores["train"]), "--eval", str(stores["eval"]), "--out", str(out), "--top-k", "2"])
    assert r.exit_code == 0, r.output
    assert f"wrote influence of 6 candidates on 2 eval task(s) to {out}" in r.stdout
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "strategy", "task", "group", "influence:a", "influence:b", "influence_max", "influence_mean"]
    assert len(table) == 6
    assert list(table["id"]) == [c["id"] for c in candidate_rows()]
    assert sorted(table["strategy"].unique()) == ["cot", "direct"]
    # the scores are mean cosines to each task's eval vectors
    tv = GradientStore.open(stores["train"]).vectors().astype(np.float64)
    ev = GradientStore.open(stores["eval"]).vectors().astype(np.float64)
    np.testing.assert_allclose(table["influence:a"], (tv @ ev[:2].T).mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(table["influence:b"], tv @ ev[2], atol=1e-5)
    np.testing.assert_allclose(table["influence_max"], table[["influence:a", "influence:b"]].max(axis=1), atol=1e-9)
    np.testing.assert_allclose(table["influence_mean"], table[["influence:a", "influence:b"]].mean(axis=1), atol=1e-9)

    topk_path = stores["dir"] / "x.topk.csv"
    assert topk_path.exists()
    assert f"wrote the top 2 candidates per eval item to {topk_path}" in r.stdout
    topk = pd.read_csv(topk_path)
    assert list(topk.columns) == ["eval_id", "eval_task", "rank", "id", "strategy", "task", "group", "score"]
    assert len(topk) == 6
    assert topk.groupby("eval_id").size().to_dict() == {"e0": 2, "e1": 2, "e2": 2}
    for eid, g in topk.groupby("eval_id"):
        assert list(g["rank"]) == [1, 2]
        assert g["score"].iloc[0] >= g["score"].iloc[1]
        j = int(str(eid)[1:])
        best = np.argsort(-(tv @ ev[j]))[:2]
        assert set(g["id"]) == {candidate_rows()[i]["id"] for i in best}


def test_influence_out_with_unsupported_suffix(stores: dict[str, Path]) -> None:
    out = stores["dir"] / "influence.txt"
    r = invoke(["influence", "--train", str(stores["train"]), "--eval", str(stores["eval"]), "--out", str(out)])
    assert_one_error_line(r, str(out), "unsupported output type '.txt'")
    assert not out.exists()


def test_study_writes_report(stores: dict[str, Path]) -> None:
    out = stores["dir"] / "study"
    r = invoke(["study", "--train", str(stores["train"]), "--eval", str(stores["eval"]), "--out", str(out), "--baseline", "direct", "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    for name in ("report.md", "report.json", "heatmap.png", "influence.parquet"):
        assert (out / name).is_file(), name
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"] == "direct"
    assert report["strategies"] == ["direct", "cot"]
    assert report["eval_tasks"] == ["a", "b"]
    assert report["n_candidates"] == 6 and report["n_groups"] == 3
    assert report["in_task"]["cot"]["n_probes"] == 3
    assert report["relative"]["direct"] == {"a": 0.0, "b": 0.0}
    lines = r.stdout.splitlines()
    assert lines[0].startswith("cot: ") and "direct in-task" in lines[0]
    assert lines[-1] == f"report: {out / 'report.md'}"


def test_study_unknown_baseline(stores: dict[str, Path]) -> None:
    r = invoke(["study", "--train", str(stores["train"]), "--eval", str(stores["eval"]), "--out", str(stores["dir"] / "s2"), "--baseline", "nope"])
    assert_one_error_line(r, "baseline strategy 'nope'", "cot, direct")


def test_eval_store_as_train_is_refused(stores: dict[str, Path]) -> None:
    out = stores["dir"] / "y.csv"
    r = invoke(["influence", "--train", str(stores["eval"]), "--eval", str(stores["eval"]), "--out", str(out)])
    assert_one_error_line(r, str(stores["eval"]), "store of eval rows was passed to --train")
    assert not out.exists()
    s = invoke(["study", "--train", str(stores["eval"]), "--eval", str(stores["eval"]), "--out", str(stores["dir"] / "s3")])
    assert_one_error_line(s, str(stores["eval"]), "--train")


def test_train_store_as_eval_is_refused(stores: dict[str, Path]) -> None:
    r = invoke(["influence", "--train", str(stores["train"]), "--eval", str(stores["train"]), "--out", str(stores["dir"] / "y.csv")])
    assert_one_error_line(r, str(stores["train"]), "store of candidates rows was passed to --eval")


def test_not_a_store_is_refused(stores: dict[str, Path]) -> None:
    r = invoke(["influence", "--train", str(stores["dir"]), "--eval", str(stores["eval"]), "--out", str(stores["dir"] / "y.csv")])
    assert_one_error_line(r, str(stores["dir"]), "not a gradient store")


def test_stores_with_different_dim_are_refused(stores: dict[str, Path]) -> None:
    ev128 = stores["dir"] / "eval128"
    r = invoke(["-q", "index", str(stores["evals"]), "--out", str(ev128), *MODEL, "--dim", "128"])
    assert r.exit_code == 0, r.output
    out = stores["dir"] / "z.csv"
    m = invoke(["influence", "--train", str(stores["train"]), "--eval", str(ev128), "--out", str(out)])
    line = assert_one_error_line(m, f"train store {stores['train']}", f"eval store {ev128}", "differ in projection", '"dim": 256', '"dim": 128')
    assert line.index('"dim": 256') < line.index('"dim": 128')
    assert not out.exists()


def test_unexpected_exception_is_one_line_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import curator.influence.indexing

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(curator.influence.indexing, "index_file", boom)
    monkeypatch.delenv("CURATOR_DEBUG", raising=False)
    data = write_jsonl(tmp_path / "c.jsonl", candidate_rows())
    r = invoke(["index", str(data), "--out", str(tmp_path / "s"), "--model", "tiny-random"])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert lines == ["error: internal error RuntimeError: disk on fire (set CURATOR_DEBUG=1 for the traceback, and please report it)"]
    assert "Traceback" not in r.output
