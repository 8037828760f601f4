"""Failing servers, on a real argilla-server 2.8.0 (issue 6, "Failing servers (Argilla)").

1. Nothing listens at the URL: push, pull and listen stop at once with one line naming it (exit 1).
2. The server process is killed (SIGKILL) in the middle of a push: the push retries a few times with
   backoff (small here: ``--retries 3 --retry-delay 0.1``), then gives up with one line naming the URL
   and saying to rerun; after the server is back (same data directory), the rerun completes, and the
   server holds every record exactly once.
3. A wrong key (401) and a user without the permission (403: an annotator creating a dataset or
   reading every response, an admin outside the workspace) get a message saying the API key or the
   workspace permission is wrong. No output, log record, exception text or log file holds any key.
4. A pull while annotators are still submitting: in ``test_failures_pull.py``, which uses the helpers here.

Nothing here is mocked: the server, the SDK and the CLI are the real ones. Test 2 runs a server of
its own (it kills it); the others use the session server of ``conftest.py``. The unit test of the
retry policy needs no server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from curator.cli.main import cli
from curator.io.data import Candidate
from curator.integrations.argilla.mapping import plan_records, spec_for
from curator.integrations.argilla.server import serve, stop

WS = "curator"
STRATEGIES = ("direct", "cot", "clarify", "evaluate")
SLOTS = [f"candidate_{i}" for i in range(1, 5)]


# --------------------------------------------------------------------------- helpers


def candidates(n: int, tag: str) -> list[Candidate]:
    """``n`` prompt groups × 4 strategies: distinct prompts, so ``n`` distinct record ids."""
    return [
        Candidate(f"{tag}-{g}-{s}", f"Question {g} of {tag}: what is {g} + {g}?", f"{2 * g} ({s}, {tag})", s, "math", f"{tag}-g{g}")
        for g in range(n) for s in STRATEGIES
    ]


def write_candidates(path: Path, cands: list[Candidate]) -> Path:
    path.write_text("".join(json.dumps(dataclasses.asdict(c)) + "\n" for c in cands))
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def run_cli(args: list[str], env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, ["-q", *args], env=env)


def one_error_line(r: Result, code: int, *needles: str) -> str:
    """Exit ``code``; stderr is exactly one line 'error: ...' holding every needle; no traceback."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def owner_headers(server: Any) -> dict[str, str]:
    return {"X-Argilla-Api-Key": server.api_key}


def workspace_id(server: Any, name: str) -> str:
    """The id of workspace ``name``, created (by the owner) when missing."""
    h = owner_headers(server)
    found = [w for w in httpx.get(f"{server.url}/api/v1/me/workspaces", headers=h).json()["items"] if w["name"] == name]
    if found:
        return found[0]["id"]
    r = httpx.post(f"{server.url}/api/v1/workspaces", json={"name": name}, headers=h)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def make_user(server: Any, role: str, *workspaces: str) -> dict[str, Any]:
    """A new user with ``role``, member of ``workspaces``, through the server's REST API (as an owner does in the UI)."""
    name = f"{role}-{uuid.uuid4().hex[:8]}"
    h = owner_headers(server)
    r = httpx.post(f"{server.url}/api/v1/users", json={"username": name, "first_name": name, "password": "failures-pw-1", "role": role}, headers=h)
    assert r.status_code == 201, r.text
    user = r.json()
    for ws in workspaces:
        r = httpx.post(f"{server.url}/api/v1/workspaces/{workspace_id(server, ws)}/users", json={"user_id": user["id"]}, headers=h)
        assert r.status_code in (200, 201), r.text
    return user


def server_ids(url: str, key: str, name: str, workspace: str = WS) -> list[str]:
    """Every record id of the dataset as the server lists it (duplicates kept, to be counted)."""
    import argilla as rg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = rg.Argilla(api_url=url, api_key=key).datasets(name=name, workspace=workspace)
        return [str(r.id) for r in ds.records(with_suggestions=False, with_responses=False, with_vectors=False)]


def dataset_total(url: str, key: str, name: str, workspace: str = WS) -> int:
    """The server's record count for the dataset (0 until it exists)."""
    h = {"X-Argilla-Api-Key": key}
    found = [d for d in httpx.get(f"{url}/api/v1/me/datasets", headers=h, timeout=5).json()["items"] if d["name"] == name]
    if not found:
        return 0
    return int(httpx.get(f"{url}/api/v1/datasets/{found[0]['id']}/records", params={"limit": 1}, headers=h, timeout=5).json()["total"])


# --------------------------------------------------------------------------- 1. server down at start


def test_server_down_at_start_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url, key = f"http://127.0.0.1:{closed_port()}", "secret-" + uuid.uuid4().hex
    cands = write_candidates(tmp_path / "cands.jsonl", candidates(2, "down"))
    api = ["--api-url", url, "--api-key", key]
    commands = {
        "push": ["argilla", "push", str(cands), "--dataset", "down", *api],
        "pull": ["argilla", "pull", "--dataset", "down", "--out", str(tmp_path / "pulled.jsonl"), *api],
        "listen": ["argilla", "listen", "--dataset", "down", "--port", str(closed_port()), "--log", str(tmp_path / "listen.jsonl"), *api],
    }
    for what, args in commands.items():
        t0 = time.monotonic()
        r = run_cli(args)
        line = one_error_line(r, 1, f"cannot reach the Argilla server at {url}")
        assert key not in r.stdout + r.stderr, what
        assert time.monotonic() - t0 < 15, f"{what} took {time.monotonic() - t0:.1f}s to notice nothing listens"
        print(f"{what}: {line}")
    assert not (tmp_path / "pulled.jsonl").exists() and not (tmp_path / "listen.jsonl").exists()

    # the same through a real process: its exit status and its stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    env.update(ARGILLA_API_URL=url, ARGILLA_API_KEY=key)
    p = subprocess.run([sys.executable, "-m", "curator.cli.main", "argilla", "pull", "--dataset", "down", "--out", str(tmp_path / "p.jsonl")],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stdout == "", (p.returncode, p.stdout, p.stderr)
    assert p.stderr.splitlines() == [p.stderr.strip()] and p.stderr.startswith(f"error: cannot reach the Argilla server at {url}"), p.stderr
    assert key not in p.stderr


def test_retry_policy_is_bounded_and_validated(tmp_path: Path) -> None:
    """The backoff schedule, the give-up line, and bad --retries/--retry-delay values (exit 2)."""
    from curator.errors import InputError
    from curator.integrations.argilla.client import ArgillaError, RetryPolicy, with_retry

    policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=0.3)
    assert [policy.delay(k) for k in (1, 2, 3)] == [0.1, 0.2, 0.3]
    sleeps: list[float] = []

    def refused() -> None:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ArgillaError) as err:
        with_retry(refused, None, "sending records 3-4 of 9", sleep=sleeps.append, policy=policy, hint="rerun it")
    assert sleeps == [0.1, 0.2, 0.3]
    assert str(err.value).endswith("while sending records 3-4 of 9 (ConnectError): start it (curator argilla serve) or fix --api-url / ARGILLA_API_URL (gave up after 4 attempts; rerun it)")
    for bad in ({"attempts": 0}, {"base_delay": -1.0}, {"base_delay": 2.0, "max_delay": 1.0}):
        with pytest.raises(InputError):
            RetryPolicy(**bad)  # type: ignore[arg-type]
    cands = write_candidates(tmp_path / "cands.jsonl", candidates(1, "opts"))
    for opt in (["--retries", "0"], ["--retry-delay", "-1"]):
        api = ["--api-url", "http://127.0.0.1:9", "--api-key", "k", *opt]
        for args in (["argilla", "push", str(cands), "--dataset", "x"], ["argilla", "pull", "--dataset", "x", "--out", str(tmp_path / "p.jsonl")], ["argilla", "listen", "--dataset", "x"]):
            r = run_cli([*args, *api])
            assert r.exit_code == 2 and opt[0] in r.stderr, (args[1], opt, r.stderr)


# --------------------------------------------------------------------------- 2. server killed mid-push


N_KILL = 120  # records of the killed push, sent one per request
KILL_AFTER = 3  # records confirmed on the server before the app process is killed


@pytest.mark.argilla
def test_server_killed_mid_push_gives_up_clearly_and_a_rerun_completes(tmp_path: Path) -> None:
    name = f"killed-{uuid.uuid4().hex[:6]}"
    cands = candidates(N_KILL, name)
    path = write_candidates(tmp_path / "cands.jsonl", cands)
    planned = {p["id"] for p in plan_records(cands, spec_for(cands))}
    assert len(planned) == N_KILL

    data_dir = tmp_path / "argilla-data"
    info = serve(data_dir)
    url, key = info.url, info.api_key
    args = ["argilla", "push", str(path), "--dataset", name, "--batch-size", "1", "--retries", "3", "--retry-delay", "0.1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGILLA_", "CURATOR_ARGILLA_"))}
    env.update(ARGILLA_API_URL=url, ARGILLA_API_KEY=key)
    proc: subprocess.Popen | None = None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "curator.cli.main", "-q", *args], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # watch the server until the first records are confirmed there, then kill its app process
        deadline = time.monotonic() + 120
        while (seen := dataset_total(url, key, name)) < KILL_AFTER:
            assert proc.poll() is None, f"the push ended before it was killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "the push never got going"
            time.sleep(0.05)
        os.kill(info.pids["app"], signal.SIGKILL)
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=120)
        gave_up_after = time.monotonic() - killed_at

        # bounded retries, then one line: the URL, what failed, how far it got, and to rerun
        assert proc.returncode == 1, (proc.returncode, out, err)
        assert key not in out + err and "Traceback" not in err
        assert len(err.splitlines()) == 1, err
        line = err.strip()
        assert line.startswith(f"error: cannot reach the Argilla server at {url} while sending records "), line
        assert "gave up after 3 attempts" in line and "rerun the same push once the server is back" in line, line
        confirmed = int(re.search(r"(\d+) of %d records were confirmed" % N_KILL, line).group(1))  # type: ignore[union-attr]
        assert KILL_AFTER - 1 <= confirmed < N_KILL, (seen, line)
        assert gave_up_after < 30, f"giving up took {gave_up_after:.1f}s with --retries 3 --retry-delay 0.1"
        print(f"killed after {seen} records; the push gave up {gave_up_after:.1f}s later: {line}")

        # while it is down, a pull through --data-dir names the URL recorded there
        r = run_cli(["argilla", "pull", "--dataset", name, "--out", str(tmp_path / "x.jsonl"), "--data-dir", str(data_dir), "--retries", "1"],
                    env={"ARGILLA_API_URL": None, "ARGILLA_API_KEY": None})
        one_error_line(r, 1, f"cannot reach the Argilla server at {url}")

        # the server comes back on the same port with the same data; what was confirmed is there
        back = serve(data_dir, port=info.port)
        assert back.url == url and back.pids["app"] != info.pids["app"]
        there = server_ids(url, key, name)
        assert len(there) == len(set(there)) and set(there) <= planned
        assert confirmed <= len(there) <= confirmed + 1, (confirmed, len(there))  # + the request in flight at the kill

        # the rerun completes: it creates exactly what was missing, and the server holds each record once
        r = run_cli(args, env={"ARGILLA_API_URL": url, "ARGILLA_API_KEY": key})
        assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
        assert key not in r.stdout + r.stderr
        assert f"pushed {N_KILL} records to {WS}/{name} ({N_KILL - len(there)} new, {len(there)} updated)" in r.stdout, r.stdout
        final = server_ids(url, key, name)
        assert len(final) == N_KILL and set(final) == planned
        assert dataset_total(url, key, name) == N_KILL
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        stop(data_dir)


# --------------------------------------------------------------------------- 3. 401/403, and the key never shows


class Everything:
    """All text a run could leak a key through: CLI output, log records, exceptions, files."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.texts: list[str] = []

    def cli(self, args: list[str]) -> Result:
        r = run_cli(args)
        self.texts += [r.stdout, r.stderr]
        if r.exc_info is not None:
            self.texts += traceback.format_exception(*r.exc_info)
        return r

    def call(self, fn: Any) -> BaseException | None:
        """Run a library call; keep its exception's whole chain (causes and contexts), as text."""
        try:
            fn()
            return None
        except Exception as exc:  # noqa: BLE001 - every kind is inspected
            e: BaseException | None = exc
            while e is not None:
                self.texts += [str(e), repr(e), *traceback.format_exception(e)]
                e = e.__cause__ or e.__context__
            return exc

    def check(self, secrets: list[str], files: list[Path]) -> int:
        """Grep everything for every secret; return how many log records were looked at."""
        records = self.caplog.records
        texts = self.texts + [self.caplog.text] + [r.getMessage() + repr(r.args) + repr(r.__dict__) for r in records]
        for f in files:
            for p in ([f] if f.is_file() else [x for x in f.rglob("*") if x.is_file()]):
                texts.append(p.read_bytes().decode("utf-8", "replace"))
        blob = "\n".join(texts)
        for s in secrets:
            assert s not in blob, "an API key leaked into output, a log record, an exception or a log file"
        return len(records)


@pytest.mark.argilla
def test_401_and_403_say_key_or_permission_and_no_output_holds_a_key(argilla_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from curator.integrations.argilla.client import ArgillaAuthError, connect
    from curator.integrations.argilla.pull import pull
    from curator.integrations.argilla.push import push

    caplog.set_level(logging.DEBUG)  # every logger, httpx and the SDK included
    monkeypatch.chdir(tmp_path)  # any file a command writes lands here, and is grepped
    url, owner = argilla_server.url, argilla_server.api_key
    tag = uuid.uuid4().hex[:6]
    other = f"closed-{tag}"
    workspace_id(argilla_server, WS)
    workspace_id(argilla_server, other)
    admin = make_user(argilla_server, "admin", WS)  # may create datasets in WS; not a member of `other`
    annotator = make_user(argilla_server, "annotator", WS)  # may only annotate in WS
    wrong = "wrong-" + uuid.uuid4().hex
    keys = [wrong, admin["api_key"], annotator["api_key"]]
    cands = candidates(3, f"auth-{tag}")
    path = write_candidates(tmp_path / "cands.jsonl", cands)
    owned = f"auth-{tag}"
    assert run_cli(["argilla", "push", str(path), "--dataset", owned, "--api-url", url, "--api-key", owner]).exit_code == 0
    assert run_cli(["argilla", "push", str(path), "--dataset", owned, "--workspace", other, "--api-url", url, "--api-key", owner]).exit_code == 0
    caplog.clear()
    seen = Everything(caplog)

    def push_as(key: str, dataset: str, workspace: str = WS) -> Result:
        return seen.cli(["argilla", "push", str(path), "--dataset", dataset, "--workspace", workspace, "--api-url", url, "--api-key", key])

    def pull_as(key: str, dataset: str, workspace: str = WS) -> Result:
        return seen.cli(["argilla", "pull", "--dataset", dataset, "--workspace", workspace, "--out", str(tmp_path / f"pulled-{uuid.uuid4().hex[:6]}.jsonl"),
                         "--api-url", url, "--api-key", key])

    refused = "the API key or the workspace permission is wrong"
    t0 = time.monotonic()
    # 401: a key the server does not know (not retried: it fails at once)
    for r in (push_as(wrong, f"new-{tag}"), pull_as(wrong, owned)):
        one_error_line(r, 1, f"Argilla at {url} refused the request while logging in: {refused}", "401")
    assert time.monotonic() - t0 < 15
    # 403: an annotator may not create a dataset, nor read every annotator's responses
    one_error_line(push_as(annotator["api_key"], f"new-{tag}"), 1, url, refused, "403", "creating dataset")
    one_error_line(pull_as(annotator["api_key"], owned), 1, url, refused, "403", f"records of dataset {owned!r}")
    # a workspace the user is not in: refused as a permission, not "no such dataset"
    for r in (push_as(admin["api_key"], f"new-{tag}", other), pull_as(admin["api_key"], owned, other)):
        one_error_line(r, 1, url, refused, f"is not a member of a workspace {other!r}", f"user {admin['username']!r}, role admin")
    # the same through a real process, where nothing catches warnings: still exactly one line on stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    env.update(ARGILLA_API_URL=url, ARGILLA_API_KEY=admin["api_key"])
    p = subprocess.run([sys.executable, "-m", "curator.cli.main", "argilla", "pull", "--dataset", owned, "--workspace", other, "--out", str(tmp_path / "p.jsonl")],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    seen.texts += [p.stdout, p.stderr]
    assert p.returncode == 1 and p.stdout == "" and len(p.stderr.splitlines()) == 1 and refused in p.stderr, (p.returncode, p.stdout, p.stderr)
    # an owner asking for a workspace that does not exist gets an input error instead
    one_error_line(pull_as(owner, owned, f"nowhere-{tag}"), 2, f"no dataset {owned!r} in workspace 'nowhere-{tag}'")
    # the right key: an admin of the workspace pushes and pulls
    r = push_as(admin["api_key"], f"admin-{tag}")
    assert r.exit_code == 0 and "pushed 3 records" in r.stdout, (r.stdout, r.stderr)
    r = pull_as(admin["api_key"], f"admin-{tag}")
    assert r.exit_code == 0 and "pulled 3 records" in r.stdout and "3 pending (no submitted response yet" in r.stdout, (r.stdout, r.stderr)

    # the library calls: the errors themselves, with everything chained to them
    err = seen.call(lambda: connect(url, wrong))
    assert isinstance(err, ArgillaAuthError) and err.exit_code == 1
    err = seen.call(lambda: push(cands, None, f"lib-{tag}", WS, client=connect(url, annotator["api_key"])))
    assert isinstance(err, ArgillaAuthError) and "403" in str(err)
    err = seen.call(lambda: pull(owned, other, connect(url, admin["api_key"]), tmp_path / "lib.jsonl"))
    assert isinstance(err, ArgillaAuthError) and "not a member" in str(err)
    assert seen.call(lambda: pull(owned, WS, connect(url, admin["api_key"]), tmp_path / "lib.jsonl")) is None

    # every key, wrong or right, absent from all of it: output, log records, exceptions, files written
    # here, and the server's own logs (which `curator argilla serve` writes under its data directory)
    n_records = seen.check(keys, [tmp_path, argilla_server.log_dir])
    assert n_records > 20, "the log capture saw too little to prove anything"
    assert any("HTTP Request" in r.getMessage() for r in caplog.records), "httpx's request log was not captured"
