"""The listener counts right on a real server: after each event (a submission, the same event
redelivered, an edit, a discard, a deletion, a failed delivery the server redelivers) and across a
kill and restart, its tally equals a recount of `curator argilla pull`'s file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from curator.integrations.argilla.client import RetryPolicy
from curator.integrations.argilla.listen import Listener
from curator.integrations.argilla.push import push
from tests.integrations.listening import answer, change, drop_webhooks, free_port, log_entries, ranking_with, recount, remove, running, wait_for
from tests.integrations.test_roundtrip import demo_set, make_annotator  # noqa: F401  (fixture)

pytestmark = pytest.mark.argilla


def _dataset(demo_set: dict[str, Any], client: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    push(demo_set["candidates"], demo_set["ranking"], name, "curator", store=demo_set["store"], client=client)
    return name


def test_tally_equals_the_recount_after_redelivery_edit_discard_and_delete(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    ws = "curator"
    name = _dataset(demo_set, argilla_client, "tally")
    log = tmp_path / "listen.jsonl"
    listener = Listener(argilla_client, name, workspace=ws, k=2, log_path=log, retry=RetryPolicy(attempts=3, base_delay=0.0))

    def recounted() -> Any:
        return recount(argilla_client, name, ws, tmp_path / "pulled.jsonl")

    with running(listener) as events:
        r0, r1 = listener.ids[:2]
        _, ana = make_annotator(argilla_server, argilla_client, f"ana-{uuid.uuid4().hex[:6]}", ws)
        _, bo = make_annotator(argilla_server, argilla_client, f"bo-{uuid.uuid4().hex[:6]}", ws)

        first = answer(argilla_server, ana, r0, "submitted", ranking_with(listener, r0, "cot"), best="cot")
        created = events.wait("response.created", first["id"])
        assert listener.tally.votes == recounted() == {"cot": 2}

        # the same event delivered twice more: nothing changes
        listener.handle(created, "response.created")
        listener.handle(created, "response.created")
        assert listener.tally.votes == recounted() == {"cot": 2}

        # ana edits her ranking: her votes move, they are not added (the 916-vs-804 bug)
        edited = change(argilla_server, ana, first["id"], "submitted", ranking_with(listener, r0, "direct"), best="direct")
        events.wait("response.updated", edited["id"])
        assert listener.tally.votes == recounted() == {"direct": 2}
        # the first event, redelivered late, is older than her edit: ignored
        assert listener.handle(created, "response.created") == []
        assert listener.tally.votes == recounted() == {"direct": 2}
        assert log_entries(log)[-1]["action"] == "ignored (older than the state counted)"

        # bo submits on another record, then discards it: his votes are withdrawn
        second = answer(argilla_server, bo, r1, "submitted", ranking_with(listener, r1, "cot"), best="clarify")
        events.wait("response.created", second["id"])
        assert listener.tally.votes == recounted() == {"direct": 2, "cot": 1, "clarify": 1}
        change(argilla_server, bo, second["id"], "discarded")
        discarded = wait_for(lambda: [d for k, d in list(events.seen) if k == "response.updated" and d["id"] == second["id"]], "bo's discard")[0]
        assert discarded["status"] == "discarded"
        assert listener.tally.votes == recounted() == {"direct": 2}
        assert listener.tally.get(r1, second["user_id"]) is None and not listener.tally.is_submitted(r1)

        # ana deletes her response: the record is pending again, and the tally empty
        remove(argilla_server, ana, first["id"])
        deleted = events.wait("response.deleted", first["id"])
        assert listener.tally.votes == recounted() == {}
        assert not listener.tally.is_submitted(r0)
        # the deletion redelivered, then the edit redelivered after it: nothing comes back
        listener.handle(deleted, "response.deleted")
        listener.handle(edited | {"record": deleted["record"], "user": deleted["user"]}, "response.updated")
        assert listener.tally.votes == recounted() == {}

    # every logged tally is the tally after that entry; the last one is empty
    assert log_entries(log)[-1]["tally"] == {}


def test_a_failed_delivery_answers_500_and_the_servers_redelivery_counts_once(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-ranking fails after the listener's retries: the webhook answers 500, the server redelivers
    (10 s later, its first retry), and the redelivery re-ranks without counting the vote again."""
    ws = "curator"
    name = _dataset(demo_set, argilla_client, "redeliver")
    log = tmp_path / "listen.jsonl"
    listener = Listener(argilla_client, name, workspace=ws, k=2, log_path=log, retry=RetryPolicy(attempts=2, base_delay=0.0))
    http = argilla_client.api.http_client
    real_put, down, puts = http.put, {"on": True}, []

    def put(url: str, *args: Any, **kwargs: Any) -> Any:
        puts.append(url)
        if down["on"]:
            return httpx.Response(500, json={"detail": "database is locked"}, request=httpx.Request("PUT", url))
        return real_put(url, *args, **kwargs)

    monkeypatch.setattr(http, "put", put)
    with running(listener) as events:
        rid = listener.ids[0]
        _, key = make_annotator(argilla_server, argilla_client, f"ann-{uuid.uuid4().hex[:6]}", ws)
        resp = answer(argilla_server, key, rid, "submitted", ranking_with(listener, rid, "cot"), best="cot")
        failed = wait_for(lambda: [e for e in log_entries(log) if "error" in e], "the failed delivery's log entry")
        assert len(puts) == 2 and "updating suggestions of" in failed[0]["error"] and "gave up after 2 attempts" in failed[0]["error"]
        assert listener.tally.votes == {"cot": 2}  # counted before the re-ranking failed
        down["on"] = False
        events.wait("response.created", resp["id"])  # the server's redelivery, handled
        assert listener.tally.votes == recount(argilla_client, name, ws, tmp_path / "pulled.jsonl") == {"cot": 2}
        changes = [e for e in log_entries(log) if "neighbour" in e]
        assert len(changes) == 2 and all(e["tally"] == {"cot": 2} and e["votes"] == ["cot", "cot"] for e in changes)
        assert [listener.ranking_suggestion(e["neighbour"]) for e in changes] == [e["new_ranking"] for e in changes]


def _listen(name: str, server: Any, port: int, log: Path, out: Path) -> subprocess.Popen:
    """`curator argilla listen` as its own process (output to a file, not a pipe)."""
    cmd = [sys.executable, "-m", "curator.cli.main", "argilla", "listen", "--dataset", name, "--api-url", server.url, "--api-key", server.api_key,
           "--port", str(port), "--log", str(log), "--neighbours", "2", "--retries", "3", "--retry-delay", "0"]
    with out.open("a") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=out.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _serving(proc: subprocess.Popen, port: int, out: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"listen exited with {proc.returncode}: {out.read_text()}")
    try:
        return httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_and_restarted_the_tally_is_rebuilt_from_the_server(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    ws = "curator"
    name = _dataset(demo_set, argilla_client, "restart")
    log, out, port = tmp_path / "listen.jsonl", tmp_path / "listen.out", free_port()
    probe = Listener(argilla_client, name, workspace=ws, log_path=tmp_path / "probe.jsonl")  # the records and their slots, to answer with
    ids = probe.ids
    _, ana = make_annotator(argilla_server, argilla_client, f"ana-{uuid.uuid4().hex[:6]}", ws)
    _, bo = make_annotator(argilla_server, argilla_client, f"bo-{uuid.uuid4().hex[:6]}", ws)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_listen(name, argilla_server, port, log, out))
        wait_for(lambda: _serving(procs[-1], port, out), "the listener to serve")
        a = answer(argilla_server, ana, ids[0], "submitted", ranking_with(probe, ids[0], "cot"), best="cot")
        b = answer(argilla_server, bo, ids[1], "submitted", ranking_with(probe, ids[1], "direct"), best="clarify")
        change(argilla_server, ana, a["id"], "submitted", ranking_with(probe, ids[0], "clarify"), best="direct")
        expected = recount(argilla_client, name, ws, tmp_path / "pulled.jsonl")
        assert expected == {"clarify": 2, "direct": 2}
        wait_for(lambda: log_entries(log) and log_entries(log)[-1].get("tally") == dict(sorted(expected.items())), "the listener's log to reach the recount")
        last = log_entries(log)[-1]["tally"]

        _kill(procs[-1])
        starts = len([e for e in log_entries(log) if e["event"] == "start"])
        procs.append(_listen(name, argilla_server, port, log, out))
        wait_for(lambda: _serving(procs[-1], port, out), "the restarted listener to serve")
        start = [e for e in log_entries(log) if e["event"] == "start"][starts]
        assert start["tally"] == last == dict(sorted(recount(argilla_client, name, ws, tmp_path / "pulled.jsonl").items()))
        assert start["submitted_responses"] == 2 and start["records"] == 6
        assert "tally rebuilt from the server: 2 submitted responses in 6 records; votes: clarify 2, direct 2" in out.read_text()

        # killed again; while it is down bo deletes his response and ana answers another record
        _kill(procs[-1])
        remove(argilla_server, bo, b["id"])
        answer(argilla_server, ana, ids[2], "submitted", ranking_with(probe, ids[2], "cot"), best="cot")
        procs.append(_listen(name, argilla_server, port, log, out))
        wait_for(lambda: _serving(procs[-1], port, out), "the listener to serve a second time")
        start = [e for e in log_entries(log) if e["event"] == "start"][starts + 1]
        assert start["tally"] == dict(sorted(recount(argilla_client, name, ws, tmp_path / "pulled.jsonl").items())) == {"clarify": 1, "cot": 2, "direct": 1}
        assert start["submitted_responses"] == 2
    finally:
        for proc in procs:
            if proc.poll() is None:
                _kill(proc)
        drop_webhooks(argilla_client, f"http://127.0.0.1:{port}")
