"""The local argilla-server: it answers, the SDK round-trips a curator-shaped dataset, data survives a
restart, and ``stop`` ends exactly the processes ``serve`` started."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from curator.integrations.argilla.server import ArgillaServerError, ServerInfo, serve, status, stop
from curator.integrations.argilla.server import manage, processes

pytestmark = pytest.mark.argilla

DIM = 16
N_RECORDS = 12


def _settings(rg):
    return rg.Settings(
        guidelines="Rank the candidates; scores are curator's suggestions.",
        fields=[rg.TextField(name="prompt"), rg.TextField(name="candidate_0"), rg.TextField(name="candidate_1")],
        questions=[
            rg.RankingQuestion(name="ranking", values=["candidate_0", "candidate_1"]),
            rg.LabelQuestion(name="best_strategy", labels=["direct", "cot"]),
        ],
        metadata=[rg.FloatMetadataProperty(name="score_0"), rg.TermsMetadataProperty(name="task")],
        vectors=[rg.VectorField(name="gradient", dimensions=DIM)],
    )


def _records(rg):
    rng = random.Random(7)
    out = []
    for i in range(N_RECORDS):
        score = round(rng.random(), 4)
        out.append(
            rg.Record(
                id=f"rec-{i}",
                fields={
                    "prompt": f"What is {i} + {i}?",
                    "candidate_0": f"{2 * i}",
                    "candidate_1": f"{i} plus {i} is {2 * i}",
                },
                metadata={"score_0": score, "task": "math" if i % 2 else "logic"},
                vectors={"gradient": [rng.gauss(0, 1) for _ in range(DIM)]},
                suggestions=[
                    rg.Suggestion("ranking", ["candidate_1", "candidate_0"], score=[0.8, 0.2], agent="curator/test"),
                    rg.Suggestion(
                        "best_strategy", "cot" if score > 0.5 else "direct", score=score, agent="curator/test"
                    ),
                ],
            )
        )
    return out


@pytest.fixture(scope="module")
def pushed(argilla_server: ServerInfo):
    """A dataset shaped like curator's push, logged once for this module: (dataset name, the records sent)."""
    import argilla as rg

    client = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)
    workspace = (
        client.workspaces("curator-server-tests") or rg.Workspace(name="curator-server-tests", client=client).create()
    )
    dataset = rg.Dataset(name="server-roundtrip", workspace=workspace, settings=_settings(rg), client=client).create()
    records = _records(rg)
    dataset.records.log(records)
    return dataset.name, workspace.name, records


def _fetch(client, pushed):
    name, workspace, _ = pushed
    dataset = client.datasets(name=name, workspace=workspace)
    return {r.id: r for r in dataset.records(with_vectors=True, with_suggestions=True)}


def _check_records(client, pushed) -> None:
    got, sent = _fetch(client, pushed), {r.id: r for r in pushed[2]}
    assert set(got) == set(sent)
    for rid, record in sent.items():
        back = got[rid]
        assert back.fields["prompt"] == record.fields["prompt"]
        assert back.metadata["score_0"] == pytest.approx(record.metadata["score_0"])
        assert back.metadata["task"] == record.metadata["task"]
        assert back.vectors["gradient"] == pytest.approx(record.vectors["gradient"])
        assert back.suggestions["ranking"].value == ["candidate_1", "candidate_0"]
        assert back.suggestions["best_strategy"].value == record.suggestions["best_strategy"].value


def test_status_endpoint_answers_with_curator_engine(argilla_server: ServerInfo, argilla_http):
    body = argilla_http().get("/api/v1/status").raise_for_status().json()
    assert body["version"] == "2.8.0"
    assert body["search_engine"]["name"] == "curator-sqlite"
    now = status(argilla_server.data_dir)
    assert now.running and now.answering and set(now.processes) == {"redis", "app", "worker"}
    assert argilla_server.api_key not in repr(argilla_server)


def test_serve_again_returns_the_running_server(argilla_server: ServerInfo):
    again = serve(argilla_server.data_dir)
    assert again.url == argilla_server.url and again.pids == status(argilla_server.data_dir).info.pids


def test_sdk_round_trip(argilla_client, pushed):
    import argilla as rg

    _check_records(argilla_client, pushed)
    dataset = argilla_client.datasets(name=pushed[0], workspace=pushed[1])
    logic = list(dataset.records(query=rg.Query(filter=rg.Filter(("metadata.task", "==", "logic")))))
    assert sorted(r.id for r in logic) == sorted(r.id for r in pushed[2] if r.metadata["task"] == "logic")
    assert dataset.progress()["total"] == N_RECORDS


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() and not processes._group_members(pid)


def test_restart_keeps_data_and_stop_ends_exactly_its_pids(argilla_server: ServerInfo, argilla_client, pushed):
    import argilla as rg

    foreign = subprocess.Popen(["sleep", "120"])
    try:
        before = status(argilla_server.data_dir).info
        stopped = stop(argilla_server.data_dir)
        assert stopped == before.pids
        assert all(_gone(pid) for pid in stopped.values())
        assert foreign.poll() is None, "a process serve did not start was touched"
        assert not (argilla_server.data_dir / manage.STATE_FILE).exists()
        assert not status(argilla_server.data_dir).running
        assert stop(argilla_server.data_dir) == {}

        # the same ports, so that the session's other tests keep their URL
        again = serve(argilla_server.data_dir, port=argilla_server.port, redis_port=argilla_server.redis_port)
        assert again.url == argilla_server.url and set(again.pids.values()).isdisjoint(before.pids.values())
    finally:
        foreign.kill()
        foreign.wait()
    client = rg.Argilla(api_url=again.url, api_key=again.api_key)
    _check_records(client, pushed)
    dataset = client.datasets(name=pushed[0], workspace=pushed[1])
    high = list(dataset.records(query=rg.Query(filter=rg.Filter(("metadata.score_0", ">=", 0.5)))))
    assert sorted(r.id for r in high) == sorted(r.id for r in pushed[2] if r.metadata["score_0"] >= 0.5)


def test_stop_leaves_a_reused_pid_alone(tmp_path: Path):
    """A pid record that no longer names the process serve started (pid reuse) is not signalled."""
    foreign = subprocess.Popen(["sleep", "120"])
    try:
        real = processes._stat_fields(foreign.pid)[19]
        fakes = {
            "app": {
                "pid": foreign.pid,
                "exe": os.readlink(f"/proc/{foreign.pid}/exe"),
                "start_time": str(int(real) + 1),
            },
            "worker": {"pid": foreign.pid, "exe": "/usr/bin/python3", "start_time": real},
        }
        state = {
            "format": manage.STATE_FORMAT,
            "url": "http://127.0.0.1:9",
            "port": 9,
            "redis_port": 9,
            "processes": fakes,
        }
        (tmp_path / manage.STATE_FILE).write_text(json.dumps(state))
        assert stop(tmp_path) == {}
        assert foreign.poll() is None
        assert not (tmp_path / manage.STATE_FILE).exists()
    finally:
        foreign.kill()
        foreign.wait()


def test_missing_redis_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ArgillaServerError, match="apt-get install redis-server") as err:
        serve(tmp_path / "data")
    assert "\n" not in str(err.value) and manage.DEFAULT_API_KEY not in str(err.value)


def test_busy_port_is_a_clear_error(argilla_server: ServerInfo, tmp_path: Path):
    with pytest.raises(ArgillaServerError, match=f"port {argilla_server.port} .* in use"):
        serve(tmp_path / "other", port=argilla_server.port)
    assert not (tmp_path / "other" / manage.STATE_FILE).exists()


def test_worker_delivers_webhooks(argilla_server: ServerInfo, argilla_client, argilla_http):
    """The rq worker runs with curator's engine: a response submitted the UI's way reaches a webhook."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import argilla as rg

    events: list = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["type"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = rg.Webhook(
        url=f"http://127.0.0.1:{receiver.server_port}/hook",
        events=["response.created", "record.completed"],
        _client=argilla_client,
    ).create()
    try:
        workspace = (
            argilla_client.workspaces("curator-server-tests")
            or rg.Workspace(name="curator-server-tests", client=argilla_client).create()
        )
        settings = rg.Settings(
            fields=[rg.TextField(name="text")], questions=[rg.LabelQuestion(name="label", labels=["a", "b"])]
        )
        dataset = rg.Dataset(
            name="webhook-check", workspace=workspace, settings=settings, client=argilla_client
        ).create()
        dataset.records.log([{"text": "hello"}])
        record_id = next(iter(dataset.records))._server_id
        body = {"status": "submitted", "values": {"label": {"value": "a"}}}
        argilla_http().post(f"/api/v1/records/{record_id}/responses", json=body).raise_for_status()
        deadline = time.monotonic() + 30
        while len(events) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(events) == ["record.completed", "response.created"]
        assert dataset.progress()["completed"] == 1
    finally:
        hook.delete()
        receiver.shutdown()


def test_a_server_that_does_not_come_up_is_cleaned_up(tmp_path: Path):
    data_dir = tmp_path / "slow"
    with pytest.raises(ArgillaServerError, match=r"did not answer within 0\.01 s; see .*app\.log") as err:
        serve(data_dir, timeout=0.01)
    assert "\n" not in str(err.value)
    assert not (data_dir / manage.STATE_FILE).exists() and not status(data_dir).running
    own = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(data_dir).encode() in _environ(p)]
    assert own == [], "processes started for the failed serve are still running"


def _environ(proc: Path) -> bytes:
    try:
        return (proc / "environ").read_bytes()
    except OSError:
        return b""


def test_updates_and_deletes_reach_the_index(argilla_server: ServerInfo, argilla_client, argilla_http):
    import sqlite3

    import argilla as rg

    workspace = (
        argilla_client.workspaces("curator-server-tests")
        or rg.Workspace(name="curator-server-tests", client=argilla_client).create()
    )
    settings = rg.Settings(
        fields=[rg.TextField(name="text")], questions=[rg.LabelQuestion(name="label", labels=["a", "b"])]
    )
    dataset = rg.Dataset(name="deletes", workspace=workspace, settings=settings, client=argilla_client).create()
    dataset.records.log([{"text": f"word{i} shared"} for i in range(3)])
    by_text = {r.fields["text"]: r for r in dataset.records}
    http = argilla_http()

    def found(query) -> list:
        return sorted(r.fields["text"] for r in dataset.records(query=rg.Query(**query)))

    dataset.records.delete([by_text["word0 shared"]])
    assert found({"query": "shared"}) == ["word1 shared", "word2 shared"]

    record_id = by_text["word1 shared"]._server_id
    created = http.post(
        f"/api/v1/records/{record_id}/responses", json={"status": "draft", "values": {"label": {"value": "a"}}}
    ).raise_for_status()
    response_id = created.json()["id"]
    body = {"status": "submitted", "values": {"label": {"value": "b"}}}
    http.put(f"/api/v1/responses/{response_id}", json=body).raise_for_status()
    assert found({"filter": rg.Filter(("label.response", "==", "b"))}) == ["word1 shared"]
    assert found({"filter": rg.Filter(("response.status", "==", "submitted"))}) == ["word1 shared"]
    http.delete(f"/api/v1/responses/{response_id}").raise_for_status()
    assert found({"filter": rg.Filter(("response.status", "==", "pending"))}) == ["word1 shared", "word2 shared"]

    dataset_id = str(dataset.id)
    dataset.delete()
    with sqlite3.connect(argilla_server.data_dir / "search.db") as db:
        assert db.execute("SELECT COUNT(*) FROM docs WHERE dataset_id = ?", (dataset_id,)).fetchone() == (0,)
