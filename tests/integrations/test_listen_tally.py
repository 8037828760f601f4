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


def locked(monkeypatch: pytest.MonkeyPatch, client: Any, method: str, hit: Any) -> tuple[dict[str, bool], list[str]]:
    """The real server behind the client's ``method`` requests, except that those whose URL ``hit``
    matches answer 500 ``database is locked`` while ``down["on"]``; the matching URLs, in order."""
    http = client.api.http_client
    real, down, seen = getattr(http, method), {"on": True}, []

    def call(url: str, *args: Any, **kwargs: Any) -> Any:
        if hit(url):
            seen.append(url)
            if down["on"]:
                return httpx.Response(500, json={"detail": "database is locked"}, request=httpx.Request(method.upper(), url))
        return real(url, *args, **kwargs)

    monkeypatch.setattr(http, method, call)
    return down, seen


def test_a_failed_rerank_write_stays_queued_and_is_written_when_the_server_is_back(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-ranking writes fail after the listener's retries: the event is counted all the same (counting
    never waits for re-ranking), the failure is logged, the neighbours stay queued, and the re-ranker
    writes them once the server answers again."""
    ws = "curator"
    name = _dataset(demo_set, argilla_client, "requeue")
    log = tmp_path / "listen.jsonl"
    listener = Listener(argilla_client, name, workspace=ws, k=2, log_path=log, retry=RetryPolicy(attempts=2, base_delay=0.0))
    down, puts = locked(monkeypatch, argilla_client, "put", lambda url: True)
    with running(listener) as events:
        rid = listener.ids[0]
        _, key = make_annotator(argilla_server, argilla_client, f"ann-{uuid.uuid4().hex[:6]}", ws)
        resp = answer(argilla_server, key, rid, "submitted", ranking_with(listener, rid, "cot"), best="cot")
        events.wait("response.created", resp["id"], settled=False)
        assert listener.tally.votes == recount(argilla_client, name, ws, tmp_path / "pulled.jsonl") == {"cot": 2}
        failed = wait_for(lambda: [e for e in log_entries(log) if e["event"] == "flush" and e.get("failed")], "the failed flush's log entry")[0]
        assert failed["failed"] == 2 and failed["through"] == 0 and "updating suggestions of" in failed["error"] and "gave up after 2 attempts" in failed["error"]
        assert len(puts) >= 4 and listener.pending() == 2  # 2 neighbours × 2 attempts, still queued
        assert not [e for e in log_entries(log) if "neighbour" in e]
        down["on"] = False
        wait_for(listener.settled, "the re-ranker to write the queued neighbours")
        changes = [e for e in log_entries(log) if "neighbour" in e]
        assert len(changes) == 2 and all(e["tally"] == {"cot": 2} and e["votes"] == ["cot", "cot"] and e["record"] == rid and e["written"] for e in changes)
        assert [listener.ranking_suggestion(e["neighbour"]) for e in changes] == [e["new_ranking"] for e in changes]
        assert log_entries(log)[-1]["event"] == "flush" and log_entries(log)[-1]["through"] == 1 and not log_entries(log)[-1]["failed"]
        assert listener.tally.votes == recount(argilla_client, name, ws, tmp_path / "pulled.jsonl") == {"cot": 2}


def test_a_failed_count_answers_500_and_the_servers_redelivery_counts_once(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting needs a read (a record it has not read yet): that read fails after the retries, the
    webhook answers 500, the server redelivers (10 s later, its first retry), and the redelivery
    queues the re-ranking without counting the vote again."""
    ws = "curator"
    name = _dataset(demo_set, argilla_client, "redeliver")
    log = tmp_path / "listen.jsonl"
    listener = Listener(argilla_client, name, workspace=ws, k=2, log_path=log, retry=RetryPolicy(attempts=2, base_delay=0.0))
    down, reads = locked(monkeypatch, argilla_client, "get", lambda url: url.endswith("/records"))
    with running(listener) as events:
        rid = listener.ids[0]
        listener.unknown.add("announced-not-read")  # as after a record.created: the next neighbour search reads the records again
        _, key = make_annotator(argilla_server, argilla_client, f"ann-{uuid.uuid4().hex[:6]}", ws)
        resp = answer(argilla_server, key, rid, "submitted", ranking_with(listener, rid, "cot"), best="cot")
        failed = wait_for(lambda: [e for e in log_entries(log) if "error" in e], "the failed delivery's log entry")
        assert len(reads) == 2 and "reading the records of dataset" in failed[0]["error"] and "gave up after 2 attempts" in failed[0]["error"]
        assert listener.tally.votes == {"cot": 2}  # counted before the read failed
        down["on"] = False
        events.wait("response.created", resp["id"])  # the server's redelivery, handled
        assert listener.tally.votes == recount(argilla_client, name, ws, tmp_path / "pulled.jsonl") == {"cot": 2}
        changes = [e for e in log_entries(log) if "neighbour" in e]
        assert len(changes) == 2 and all(e["tally"] == {"cot": 2} and e["votes"] == ["cot", "cot"] for e in changes)
        assert [listener.ranking_suggestion(e["neighbour"]) for e in changes] == [e["new_ranking"] for e in changes]


def test_rerankings_a_killed_run_queued_are_written_by_the_next_start(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    """The log says which re-rankings were queued and never flushed (``seq`` above the last flush's
    ``through``); the next start queues them again and writes them with the rebuilt tally."""
    ws = "curator"
    name = _dataset(demo_set, argilla_client, "unflushed")
    log = tmp_path / "listen.jsonl"
    first = Listener(argilla_client, name, workspace=ws, k=2, log_path=log, retry=RetryPolicy(attempts=2, base_delay=0.0))
    ids = first.ids
    # what a run killed mid-flush leaves: event 1's neighbours flushed, event 2's queued only, a torn last line
    with log.open("a") as fh:
        fh.write('{"event": "response.created", "record": "%s", "seq": 1, "queued": ["%s"]}\n' % (ids[0], ids[1]))
        fh.write('{"event": "flush", "through": 1}\n')
        fh.write('{"event": "response.created", "record": "%s", "seq": 2, "queued": ["%s", "%s"]}\n' % (ids[0], ids[2], ids[3]))
        fh.write('{"event": "response.upd')
    from curator.integrations.argilla.listen_log import unflushed

    assert unflushed(log) == [ids[2], ids[3]]
    _, key = make_annotator(argilla_server, argilla_client, f"ann-{uuid.uuid4().hex[:6]}", ws)
    answer(argilla_server, key, ids[0], "submitted", ranking_with(first, ids[0], "cot"), best="cot")
    second = Listener(argilla_client, name, workspace=ws, k=2, weight=5.0, log_path=log, retry=RetryPolicy(attempts=2, base_delay=0.0))
    start = log_entries(log)[-1]
    assert start["event"] == "start" and start["queued"] == [ids[2], ids[3]] and start["tally"] == {"cot": 2}
    assert second.pending() == 2
    written = second.flush()
    assert [e["neighbour"] for e in written] == [ids[2], ids[3]] and all(e["written"] and e["tally"] == {"cot": 2} for e in written)
    for e in written:
        assert second.ranking_suggestion(e["neighbour"]) == e["new_ranking"] and e["new_ranking"][0] == ranking_with(second, e["neighbour"], "cot")[0]
    assert unflushed(log) == []  # a third start re-queues nothing


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
