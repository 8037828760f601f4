"""`curator generate --backend openai` against a real `transformers serve` on the bundled SmolLM2.

The server runs offline from the converted model folder, on a free port. `transformers serve`
decodes greedily unless a request carries ``generation_config`` with ``do_sample``, so two runs
with the default body give the same text: a run through faults must end with exactly the rows
of a clean run, none twice, none missing.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import write_jsonl
from tests.serving import FaultProxy, free_port, start_serve, stop_serve, wait_for
from tests.test_cli import invoke

pytestmark = pytest.mark.serve

SECRET = "sk-curator-test-" + "3" * 20
N = 6
STRATEGIES = "teacher,direct"


@pytest.fixture(scope="module")
def model_folder() -> Path:
    from curator.model.models import smollm2_folder

    return smollm2_folder()


@pytest.fixture(scope="module")
def served(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, url = start_serve(model_folder, log)
    try:
        yield url
    finally:
        stop_serve(proc)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("prompts")
    return write_jsonl(d / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"What is {i} times {i + 1}?", "task": "math"} for i in range(N)])


def args(prompts: Path, out: Path, url: str, model: Path, *extra: str) -> list[str]:
    return ["-q", "generate", str(prompts), "--strategies", STRATEGIES, "--backend", "openai", "--base-url", url, "--model", str(model), "--max-new-tokens", "12", "--out", str(out), *extra]


def pairs(path: Path) -> dict[tuple[str, str], str]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    out = {(r["group"], r["strategy"]): r["response"] for r in rows}
    assert len(out) == len(rows), "a pair was written twice"
    return out


@pytest.fixture(scope="module")
def clean(served: str, prompts: Path, model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], str]:
    """A fault-free run, with an API key in the environment."""
    d = tmp_path_factory.mktemp("clean")
    out = d / "clean.jsonl"
    r = invoke(args(prompts, out, served, model_folder, "--concurrency", "4"), env={"OPENAI_API_KEY": SECRET})
    assert r.exit_code == 0, r.output
    assert f"generated {2 * N} candidate rows for {N} of {N} prompts" in r.stdout
    assert f"teacher {model_folder}: {2 * N} requests in" in r.stdout and "0 retries" in r.stdout
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["provenance"]["backend"] for x in rows} == {"openai"} and {x["provenance"]["model"] for x in rows} == {str(model_folder)}
    side = json.loads((d / "clean.generate.json").read_text())
    assert side["generators"]["teacher"]["base_url"] == served
    assert side["runs"][0]["requests"]["teacher"]["completed"] == 2 * N
    # the key went out in the Authorization header, and nowhere else
    assert SECRET not in r.output
    assert not any(SECRET in f.read_text(errors="replace") for f in d.rglob("*") if f.is_file())
    got = pairs(out)
    assert len(got) == 2 * N and all(got.values())
    return got


def test_clean_run_against_transformers_serve(clean: dict[tuple[str, str], str]) -> None:
    assert {s for _, s in clean} == {"teacher", "direct"}


def test_faults_end_with_exactly_the_clean_rows(served: str, prompts: Path, model_folder: Path, clean: dict[tuple[str, str], str], tmp_path: Path) -> None:
    proxy = FaultProxy(served, plan={1: "drop", 2: "500", 3: "429", 5: "stall", 7: "drop-after", 9: "500", 10: "drop"}, blank="What is 4 times 5?", retry_after=2.0, stall_seconds=14.0)
    url = proxy.start()
    try:
        out = tmp_path / "out.jsonl"
        r = invoke(args(prompts, out, url, model_folder, "--concurrency", "3", "--timeout", "10", "--retries", "4"))
        assert r.exit_code == 0, r.output
    finally:
        proxy.stop()
    assert proxy.faults() == {"drop": 2, "500": 2, "429": 1, "stall": 1, "drop-after": 1, "blank": 1}
    got = pairs(out)
    expected = {k: v for k, v in clean.items() if k != ("q4", "teacher")}  # the blanked answer is counted, not written
    assert got == expected
    assert "  teacher: 5 written; 1 empty (not written)" in r.stdout
    # the injected faults are retried, each counted by its kind; the stall is a read timeout. On a loaded
    # machine a queued request may also time out once more, so connection errors are at least 4
    m = re.search(r"(\d+) retries \((\d+) rate-limited, (\d+) server errors, (\d+) connection errors\)", r.stdout)
    assert m, r.stdout
    retries, limited, server, connection = map(int, m.groups())
    assert (limited, server) == (1, 2) and connection >= 4 and retries == limited + server + connection
    assert min(proxy.retries_after("429")) >= 1.9  # Retry-After was honoured
    side = json.loads((tmp_path / "out.generate.json").read_text())
    assert side["skipped"] == [{"group": "q4", "strategy": "teacher", "reason": "empty"}]


def test_a_server_killed_mid_run_then_restarted_lets_the_rerun_complete(prompts: Path, model_folder: Path, clean: dict[tuple[str, str], str], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    proc, url = start_serve(model_folder, log, port)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "curator.cli.main", *args(prompts, out, url, model_folder, "--concurrency", "1", "--retries", "2")]
    run_log = tmp_path / "run.log"
    try:
        with run_log.open("wb") as fh:
            gen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 3, 120, "3 rows")
            stop_serve(proc, signal.SIGKILL)
            rc = gen.wait(timeout=120)
        text = run_log.read_text()
        assert rc == 1, text
        errors = [x for x in text.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and "a request failed 3 times" in errors[0] and "rerun the same command to continue" in errors[0], text
        partial = pairs(out)
        assert 3 <= len(partial) < 2 * N and all(clean[k] == v for k, v in partial.items())
        proc, url2 = start_serve(model_folder, log, port)
        assert url2 == url
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"generated {2 * N - len(partial)} candidate rows" in r.stdout
        assert pairs(out) == clean
    finally:
        stop_serve(proc)


def test_seeded_sampling_through_the_server_is_reproducible(served: str, model_folder: Path, tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Write one sentence about the number {i}."} for i in range(3)])
    sample = ["--extra-body", json.dumps({"generation_config": json.dumps({"do_sample": True})}), "--temperature", "1.0", "--top-p", "1.0"]
    runs = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        out = tmp_path / f"{name}.jsonl"
        r = invoke(args(prompts, out, served, model_folder, "--concurrency", "2", "--seed", seed, *sample))
        assert r.exit_code == 0, r.output
        runs[name] = pairs(out)
    assert runs["a"] == runs["b"]  # one seed per request, fixed by --seed and the request
    assert runs["a"].keys() == runs["c"].keys() and runs["a"] != runs["c"]  # another seed, other samples
    side = json.loads((tmp_path / "a.generate.json").read_text())
    assert side["generators"]["teacher"]["extra_body"] == {"generation_config": '{"do_sample": true}'}
    r = invoke(args(prompts, tmp_path / "a.jsonl", served, model_folder, "--seed", "0", *sample[2:]))  # without the extra body
    assert r.exit_code == 2 and "--extra-body" in r.stderr


def test_a_wrong_model_name_is_the_servers_own_refusal(served: str, prompts: Path, tmp_path: Path) -> None:
    r = invoke(["generate", str(prompts), "--strategies", "teacher", "--backend", "openai", "--base-url", served, "--model", "no/such-model", "--out", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2, r.output
    line = r.stderr.strip().splitlines()[-1]
    assert "the server refused a request for model 'no/such-model' (HTTP 400" in line and "pinned to" in line
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.generate.json").exists()  # nothing was made
