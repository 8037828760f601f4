"""`curator argilla push|pull|serve` and `curator export` through the real CLI, on a real argilla-server.

Inputs come from the real pipeline on the bundled demo data (3 prompt groups × 4 strategies):
``curator align`` scores, ``curator index`` stores (candidates and eval rows) and a ``curator
influence`` table, all with the tiny random model. Every command's stdout and stderr is checked for
the API key, which must never be printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from curator.cli.main import cli
from curator.io.data import load_candidates

from .test_roundtrip import make_annotator, respond, server_count

WS = "curator"
STRATEGIES = ("direct", "cot", "clarify", "evaluate")


# --------------------------------------------------------------------------- helpers


def invoke(args: list[str], *secrets: str, env: dict[str, str | None] | None = None) -> Result:
    """Run `curator -q ARGS` in-process; no secret may appear in stdout or stderr."""
    result = CliRunner().invoke(cli, ["-q", *args], env=env)
    assert_no_secret(result.stdout + result.stderr, *secrets)
    return result


def assert_no_secret(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text, "an API key was printed"


def assert_one_error_line(result: Result, code: int, *needles: str) -> str:
    """Exit ``code``, stderr is one line 'error: ...' holding every needle, no traceback, nothing on stdout."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def records_by_group(client: Any, name: str) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = client.datasets(name=name, workspace=WS)
        return {r.metadata["group"]: r for r in ds.records(with_suggestions=True, with_responses=False, with_vectors=True)}


# --------------------------------------------------------------------------- inputs, made by the CLI


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """candidates (3 groups × 4 strategies, and a 3-strategy variant), align scores, stores, influence."""
    from curator.io.data import load_eval
    from curator.demo import demo_data_dir, subset

    d = tmp_path_factory.mktemp("cli-inputs")
    demo = demo_data_dir()
    cands, evals = subset(load_candidates(demo / "candidates.jsonl"), load_eval(demo / "eval.jsonl"), 3, 1)
    assert len(cands) == 12 and len({c.group for c in cands}) == 3
    paths = {
        "cands": write_jsonl(d / "cands.jsonl", [dataclasses.asdict(c) for c in cands]),
        "cands3": write_jsonl(d / "cands3.jsonl", [dataclasses.asdict(c) for c in cands if c.strategy != "evaluate"]),
        "eval": write_jsonl(d / "eval.jsonl", [dataclasses.asdict(e) for e in evals]),
        "scores": d / "scores.parquet", "store": d / "train_store", "eval_store": d / "eval_store", "influence": d / "influence.parquet",
    }
    steps = [
        ["align", str(paths["cands"]), "--out", str(paths["scores"]), "--model", "tiny-random", "--samples", "2", "--max-new-tokens", "8", "--metrics", "rouge-l,token-f1"],
        ["index", str(paths["cands"]), "--out", str(paths["store"]), "--model", "tiny-random", "--dim", "64"],
        ["index", str(paths["eval"]), "--out", str(paths["eval_store"]), "--as", "eval", "--model", "tiny-random", "--dim", "64"],
        ["influence", "--train", str(paths["store"]), "--eval", str(paths["eval_store"]), "--out", str(paths["influence"])],
    ]
    for args in steps:
        r = invoke(args)
        assert r.exit_code == 0, (args, r.stdout, r.stderr, r.exception)
    return paths


def push_args(inputs: dict[str, Path], name: str, *extra: str, cands: str = "cands") -> list[str]:
    return ["argilla", "push", str(inputs[cands]), "--dataset", name, *extra]


# --------------------------------------------------------------------------- the loop


@pytest.mark.argilla
def test_push_annotate_pull_export_through_the_cli(inputs: dict[str, Path], argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    url, key = argilla_server.url, argilla_server.api_key
    name = f"cli-{uuid.uuid4().hex[:8]}"
    api = ["--api-url", url, "--api-key", key]
    cands = load_candidates(inputs["cands"])
    text = {c.id: c.response for c in cands}

    # push with options, scores, influence and the gradient store; the progress bar is on (no -q)
    args = push_args(inputs, name, "--scores", str(inputs["scores"]), "--influence", str(inputs["influence"]), "--store", str(inputs["store"]), "--batch-size", "2", *api)
    r = CliRunner().invoke(cli, args)
    assert_no_secret(r.stdout + r.stderr, key)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert f"pushed 3 records to {WS}/{name} (3 new, 0 updated) — dataset created" in r.stdout
    assert f"annotate at {url}" in r.stdout
    assert server_count(argilla_client, name, WS) == 3

    # the records carry the ranking built from both score tables, and the store's vector
    records = records_by_group(argilla_client, name)
    assert set(records) == {c.group for c in cands}
    for rec in records.values():
        assert [rec.metadata[f"strategy_{i}"] for i in range(1, 5)] == list(STRATEGIES)
        assert all(isinstance(rec.metadata.get(f"{k}_{i}"), float) for k in ("alignment", "influence", "score") for i in range(1, 5))
        sugg = {s.question_name: s for s in rec.suggestions}
        assert sorted(sugg["ranking"].value) == [f"candidate_{i}" for i in range(1, 5)]
        assert len(rec.vectors["gradient"]) == 64

    # again, in a real subprocess, with the URL and key from the environment: nothing new
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    env.update(ARGILLA_API_URL=url, ARGILLA_API_KEY=key)
    p = subprocess.run([sys.executable, "-m", "curator.cli.main", *push_args(inputs, name, "--scores", str(inputs["scores"]), "--store", str(inputs["store"]))],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert_no_secret(p.stdout + p.stderr, key)
    assert p.returncode == 0, p.stderr
    assert f"pushed 3 records to {WS}/{name} (0 new, 3 updated)" in p.stdout and "dataset created" not in p.stdout
    assert "Traceback" not in p.stderr
    assert server_count(argilla_client, name, WS) == 3

    # two annotators rank through the UI's endpoint: g0 by both (same order), g1 by one, g2 left pending
    g0, g1, g2 = sorted(records)
    slot_id = {g: {f"candidate_{i}": records[g].metadata[f"candidate_id_{i}"] for i in range(1, 5)} for g in records}
    order0 = [("candidate_2", 1), ("candidate_1", 2), ("candidate_4", 3), ("candidate_3", 4)]
    order1 = [("candidate_4", 1), ("candidate_3", 2), ("candidate_2", 3), ("candidate_1", 4)]
    suffix = uuid.uuid4().hex[:6]
    _, k1 = make_annotator(argilla_server, argilla_client, f"cli1-{suffix}", WS)
    _, k2 = make_annotator(argilla_server, argilla_client, f"cli2-{suffix}", WS)
    respond(argilla_server, str(records[g0]._model.id), k1, "submitted", order0, "cot")
    respond(argilla_server, str(records[g0]._model.id), k2, "submitted", order0, "cot")
    respond(argilla_server, str(records[g1]._model.id), k1, "submitted", order1, "evaluate")
    want = {g0: [slot_id[g0][s] for s, _ in order0], g1: [slot_id[g1][s] for s, _ in order1]}

    # pull, with the URL and key from the environment
    pulled = tmp_path / "pulled.jsonl"
    r = invoke(["argilla", "pull", "--dataset", name, "--out", str(pulled)], key, k1, k2, env={"ARGILLA_API_URL": url, "ARGILLA_API_KEY": key})
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert f"pulled 3 records into {pulled}: 2 submitted (3 responses), 0 discarded, 1 pending" in r.stdout
    assert "best-strategy votes: cot 2, evaluate 1" in r.stdout
    rows = {row["group"]: row for row in map(json.loads, pulled.read_text().splitlines())}
    assert {g: rows[g]["ranking"] for g in (g0, g1)} == want and rows[g2]["status"] == "pending"
    assert rows[g0]["n_annotators"] == 2 and rows[g0]["agreement"] == pytest.approx(1.0)

    # export: SFT as JSONL, DPO as Parquet, SFT as a datasets folder; each with a card
    r = invoke(["export", str(pulled), "--format", "sft", "--out", str(tmp_path / "sft.jsonl")], key)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert f"wrote 2 SFT rows from 2 of 3 records to {tmp_path / 'sft.jsonl'} (dropped 1 by pending)" in r.stdout
    sft = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert sorted((s["group"], s["candidate_id"]) for s in sft) == [(g0, want[g0][0]), (g1, want[g1][0])]
    for s in sft:
        assert s["completion"] == text[s["candidate_id"]] and s["prompt"] == rows[s["group"]]["prompt"] and s["dataset"] == name
    assert (tmp_path / "sft.README.md").exists()

    r = invoke(["export", str(pulled), "--format", "dpo", "--out", str(tmp_path / "dpo.parquet")], key)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert "wrote 6 DPO rows from 2 of 3 records" in r.stdout
    import pyarrow.parquet as pq

    dpo = pq.read_table(tmp_path / "dpo.parquet").to_pylist()
    assert sorted((d["group"], d["chosen_id"], d["rejected_id"]) for d in dpo) == sorted((g, want[g][0], rej) for g in (g0, g1) for rej in want[g][1:])
    for d in dpo:
        assert d["chosen"] == text[d["chosen_id"]] and d["rejected"] == text[d["rejected_id"]]
        assert d["rejected_rank"] == want[d["group"]].index(d["rejected_id"]) + 1
    card = (tmp_path / "dpo.README.md").read_text()
    assert f"Argilla dataset: {name}" in card and "records pulled: 3" in card and "rows written: 6" in card

    folder = tmp_path / "sft_ds"
    r = invoke(["export", str(pulled), "--format", "sft", "--out", str(folder)], key)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    import datasets

    ds = datasets.load_from_disk(str(folder))
    assert sorted(ds["candidate_id"]) == sorted([want[g0][0], want[g1][0]])
    assert "records kept: 2" in (folder / "README.md").read_text()

    # a malformed pulled file: line 2 broken JSON, then line 2 naming a candidate the record lacks
    good = pulled.read_text().splitlines()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n" + '{"record_id": "x", "status": \n')
    assert_one_error_line(invoke(["export", str(bad), "--format", "sft", "--out", str(tmp_path / "x.jsonl")], key), 2, f"{bad}: line 2", "invalid JSON")
    row = json.loads(good)
    row["ranking"] = ["no-such-candidate"]
    bad.write_text(good + "\n" + json.dumps(row) + "\n")
    assert_one_error_line(invoke(["export", str(bad), "--format", "dpo", "--out", str(tmp_path / "x.jsonl")], key), 2, f"{bad}: line 2", "'ranking'", "no-such-candidate")
    assert not (tmp_path / "x.jsonl").exists()


# --------------------------------------------------------------------------- failures


def test_unreachable_server_is_one_line_naming_the_url(inputs: dict[str, Path], tmp_path: Path) -> None:
    url, key = f"http://127.0.0.1:{closed_port()}", "secret-" + uuid.uuid4().hex
    r = invoke(push_args(inputs, "unreachable", "--api-url", url, "--api-key", key), key)
    assert_one_error_line(r, 1, f"cannot reach the Argilla server at {url}")
    r = invoke(["argilla", "pull", "--dataset", "unreachable", "--out", str(tmp_path / "x.jsonl")], key, env={"ARGILLA_API_URL": url, "ARGILLA_API_KEY": key})
    assert_one_error_line(r, 1, f"cannot reach the Argilla server at {url}")


@pytest.mark.argilla
def test_wrong_key_or_permission_is_refused_without_printing_it(inputs: dict[str, Path], argilla_server: Any, argilla_client: Any) -> None:
    url, wrong = argilla_server.url, "wrong-" + uuid.uuid4().hex
    r = invoke(push_args(inputs, f"auth-{uuid.uuid4().hex[:8]}", "--api-url", url, "--api-key", wrong), wrong, argilla_server.api_key)
    assert_one_error_line(r, 1, url, "the API key or the workspace permission is wrong")
    # a valid key of a user who may not create datasets
    _, annotator = make_annotator(argilla_server, argilla_client, f"cli-perm-{uuid.uuid4().hex[:6]}", WS)
    r = invoke(push_args(inputs, f"perm-{uuid.uuid4().hex[:8]}", "--api-url", url, "--api-key", annotator), annotator, argilla_server.api_key)
    assert_one_error_line(r, 1, "the API key or the workspace permission is wrong")


@pytest.mark.argilla
def test_incompatible_dataset_is_refused_naming_the_setting(inputs: dict[str, Path], argilla_server: Any, argilla_client: Any) -> None:
    name, key = f"cli-compat-{uuid.uuid4().hex[:8]}", argilla_server.api_key
    api = ["--api-url", argilla_server.url, "--api-key", key]
    r = invoke(push_args(inputs, name, *api, cands="cands3"), key)
    assert r.exit_code == 0 and "pushed 3 records" in r.stdout, (r.stdout, r.stderr)
    r = invoke(push_args(inputs, name, *api), key)
    assert_one_error_line(r, 2, f"dataset '{name}' has question 'ranking' with 3 options, this push needs 4", "push to a new --dataset name")
    assert server_count(argilla_client, name, WS) == 3  # nothing was written


@pytest.mark.argilla
def test_an_error_after_the_progress_bar_started_starts_its_own_line(inputs: dict[str, Path], argilla_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx
    from argilla._api._records import RecordsAPI

    real_upsert, calls = RecordsAPI.bulk_upsert, {"n": 0}

    def refuse_second_batch(self: Any, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] >= 2:  # a non-transient refusal: no retries, the command stops at once
            raise httpx.HTTPStatusError("unprocessable", request=httpx.Request("PUT", argilla_server.url), response=httpx.Response(422))
        return real_upsert(self, *a, **kw)

    monkeypatch.setattr(RecordsAPI, "bulk_upsert", refuse_second_batch)
    key = argilla_server.api_key
    r = CliRunner().invoke(cli, push_args(inputs, f"cli-bar-{uuid.uuid4().hex[:8]}", "--batch-size", "1", "--api-url", argilla_server.url, "--api-key", key))
    assert_no_secret(r.stdout + r.stderr, key)
    assert r.exit_code == 1 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    assert "push:" in r.stderr  # the bar was drawn (1 of 3 records sent)
    errors = [ln for ln in r.stderr.splitlines() if "error: " in ln]
    assert len(errors) == 1 and "sending records 2-2 of 3" in errors[0], r.stderr
    assert errors[0].startswith("error: "), errors[0]  # the bar was closed first


def test_export_of_a_malformed_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "pulled.jsonl"
    bad.write_text('{"record_id": "r1", "status": "submitted"}\n')
    r = invoke(["export", str(bad), "--format", "sft", "--out", str(tmp_path / "sft.jsonl")])
    assert_one_error_line(r, 2, f"{bad}: line 1", "missing field")
    bad.write_text("\n\n{broken\n")
    r = invoke(["export", str(bad), "--format", "dpo", "--out", str(tmp_path / "dpo.parquet")])
    assert_one_error_line(r, 2, f"{bad}: line 3", "invalid JSON")


# --------------------------------------------------------------------------- serve --status


@pytest.mark.argilla
def test_serve_status_reports_the_running_server(argilla_server: Any) -> None:
    r = invoke(["argilla", "serve", "--status", "--data-dir", str(argilla_server.data_dir)], argilla_server.api_key)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert r.stdout.strip() == f"{argilla_server.data_dir}: running at {argilla_server.url}"


def test_serve_status_on_an_empty_dir_says_not_running(tmp_path: Path) -> None:
    r = invoke(["argilla", "serve", "--status", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert r.stdout.strip() == f"{tmp_path}: not running"
    assert list(tmp_path.iterdir()) == []  # asking starts and writes nothing
