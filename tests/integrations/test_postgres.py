"""A team on one server: `curator argilla serve --database postgresql` runs a real local PostgreSQL.

One server for the module (Redis, PostgreSQL, argilla-server and its worker), in a data directory of its
own under /tmp with mode 0755: PostgreSQL runs as the user ``postgres`` when the tests run as root, and
pytest's own temporary root is closed to other users (mode 0700). The tests push with curator's push,
have 20 annotators submit at once through the UI's endpoints (real threads, real HTTP), pull, stop the
database under a running push, restart, and stop everything. The default SQLite server gets its
WAL check on the session server of the other tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from curator.cli.main import cli
from curator.errors import InputError
from curator.integrations.argilla.pull import pull
from curator.integrations.argilla.push import push
from curator.integrations.argilla.server import ServerInfo, manage, processes, serve, status, stop
from curator.integrations.argilla.server import postgres as pg
from curator.integrations.argilla.server.database import redact, resolve

from .test_restart import ProgressWatch, big_candidates
from .test_roundtrip import make_annotator, server_count

WS = "curator"
ANNOTATORS = 20  # concurrent annotators, one thread and one HTTP client each
PER_ANNOTATOR = 4  # records each one submits (each submit follows a fetch of its pending queue)
POOL = 24  # the records they share: about 3.3 submits per record, so records complete under contention


def reachable_dir(prefix: str) -> Path:
    """A fresh folder under /tmp that the ``postgres`` user can enter."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def sdk(info: ServerInfo) -> Any:
    import argilla as rg

    return rg.Argilla(api_url=info.url, api_key=info.api_key)


def _left_in(data_dir: Path) -> list[str]:
    """Live processes working in ``data_dir`` (cwd under it, or it in their environment): what a stop must end."""
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if processes._stat_fields(int(proc.name))[0] in ("Z", "X"):
                continue
            cwd = os.readlink(proc / "cwd")
            environ = (proc / "environ").read_bytes()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, TypeError):
            continue
        if cwd.startswith(str(data_dir)) or str(data_dir).encode() in environ:
            left.append(f"{proc.name}: {cmd}")
    return left


@pytest.fixture(scope="module")
def pg_server() -> Iterator[ServerInfo]:
    base = reachable_dir("curator-pg-")
    data_dir = base / "argilla-data"
    info = serve(data_dir, database="postgresql")
    try:
        yield info
    finally:
        stop(data_dir)
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------ the server
@pytest.mark.argilla
def test_serve_runs_a_local_postgresql(pg_server: ServerInfo) -> None:
    data_dir = pg_server.data_dir
    now = status(data_dir)
    assert now.running and set(now.processes) == {"redis", "postgres", "app", "worker"}
    assert pg_server.database == "postgresql" and pg_server.postgres_port
    assert f"127.0.0.1:{pg_server.postgres_port}" in pg_server.database_shown
    assert not (data_dir / "argilla.db").exists()
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert json.loads((data_dir / "database.json").read_text()) == {"kind": "postgresql"}
    secret = data_dir / pg.PASSWORD_FILE
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert secret.read_text().strip() not in (data_dir / manage.STATE_FILE).read_text()
    record = json.loads((data_dir / manage.STATE_FILE).read_text())["processes"]["postgres"]
    assert record["exe"].endswith("/postgres") and "listen_addresses=127.0.0.1" in record["cmdline"]
    if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the postgres user, which owns the cluster
        uid = pg.run_as().uid  # type: ignore[union-attr]
        assert (data_dir / "postgres").stat().st_uid == uid
        real = Path(f"/proc/{record['pid']}/status").read_text().split("Uid:")[1].split()[0]
        assert int(real) == uid
    body = httpx.get(f"{pg_server.url}/api/v1/status", headers={"X-Argilla-Api-Key": pg_server.api_key}).json()
    assert body["version"] == "2.8.0"
    again = serve(data_dir)  # the directory remembers its database: no --database needed
    assert again.url == pg_server.url and again.pids == now.info.pids  # type: ignore[union-attr]


@pytest.mark.argilla
def test_twenty_annotators_submit_at_once_and_every_answer_lands(pg_server: ServerInfo, tmp_path: Path) -> None:
    name = f"team-{uuid.uuid4().hex[:6]}"
    client = sdk(pg_server)
    cands = big_candidates(tmp_path / "cands.jsonl")
    result = push(cands, None, name, WS, client=client, batch_size=16, annotators=3)
    assert (result.created, result.total) == (48, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = client.datasets(name=name, workspace=WS)
        group_of = {str(r._server_id): r.metadata["group"] for r in ds.records(with_suggestions=False)}
    shared = sorted(group_of)[:POOL]
    suffix = uuid.uuid4().hex[:6]
    team = [make_annotator(pg_server, client, f"t{i}-{suffix}", WS) for i in range(ANNOTATORS)]
    rng = np.random.default_rng(1)
    plans = [[shared[j] for j in rng.choice(POOL, PER_ANNOTATOR, replace=False)] for _ in team]

    answers: list[tuple[str, str, str, int, str]] = []  # (user id, record id, what, status, body head)
    lock, start = threading.Lock(), threading.Barrier(ANNOTATORS)
    queue_filter = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
                                        {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]}]}}

    def annotate(user_id: str, key: str, records: list[str]) -> None:
        with httpx.Client(base_url=pg_server.url, headers={"X-Argilla-Api-Key": key}, timeout=120) as http:
            start.wait()
            for k, rid in enumerate(records):
                fetched = http.post(f"/api/v1/me/datasets/{ds.id}/records/search", params={"include": []}, json=queue_filter)
                order = [(f"candidate_{(k + j) % 4 + 1}", j + 1) for j in range(4)]
                values = {"ranking": {"value": [{"value": v, "rank": r} for v, r in order]}, "best_strategy": {"value": "cot"}}
                body = {"status": "submitted", "values": values}
                sent = http.post(f"/api/v1/records/{rid}/responses", json=body)
                with lock:
                    answers.append((user_id, rid, "queue", fetched.status_code, fetched.text[:200]))
                    answers.append((user_id, rid, "submit", sent.status_code, sent.text[:200]))

    threads = [threading.Thread(target=annotate, args=(uid, key, plan)) for (uid, key), plan in zip(team, plans)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    took = time.monotonic() - began
    assert len(answers) == 2 * ANNOTATORS * PER_ANNOTATOR
    errors = [a for a in answers if a[3] >= 500]
    assert errors == [], f"{len(errors)} of {len(answers)} requests answered 5xx, e.g. {errors[:3]}"
    assert all(a[3] in (200, 201) for a in answers), [a for a in answers if a[3] not in (200, 201)][:3]
    submitted = {(uid, rid) for uid, rid, what, code, _ in answers if what == "submit" and code == 201}
    assert len(submitted) == ANNOTATORS * PER_ANNOTATOR
    print(f"{len(answers)} requests from {ANNOTATORS} annotators in {took:.1f} s, none 5xx")

    # on the server: every response, and the records that got 3 submissions are completed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = sdk(pg_server).datasets(name=name, workspace=WS)
        held = {(str(resp.user_id), str(r._server_id)) for r in ds.records(with_responses=True) for resp in r.responses
                if str(getattr(resp.status, "value", resp.status)) == "submitted"}
        progress = ds.progress()
    assert held == submitted
    per_record = {rid: sum(1 for _, r in submitted if r == rid) for rid in shared}
    assert progress["completed"] == sum(1 for n in per_record.values() if n >= 3)

    # in curator's pull
    res = pull(name, WS, sdk(pg_server), tmp_path / "pulled.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "pulled.jsonl").read_text().splitlines()]
    pulled = {(a["user_id"], r["group"]) for r in rows for a in r["annotations"]}
    assert pulled == {(uid, group_of[rid]) for uid, rid in submitted}
    assert res.records == 48 and res.responses == len(submitted)


@pytest.mark.argilla
def test_database_down_mid_push_is_one_line_and_a_rerun_completes(pg_server: ServerInfo, tmp_path: Path) -> None:
    data_dir, url, key = pg_server.data_dir, pg_server.url, pg_server.api_key
    name = f"pgdown-{uuid.uuid4().hex[:6]}"
    big_candidates(tmp_path / "cands.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    env.update(ARGILLA_API_URL=url, ARGILLA_API_KEY=key)
    args = ["argilla", "push", str(tmp_path / "cands.jsonl"), "--dataset", name, "--batch-size", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "curator.cli.main", *args, "--retries", "3", "--retry-delay", "0.2"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        watch = ProgressWatch(proc, 6)
        assert watch.paused.wait(timeout=90), watch.buf[-2000:].decode("utf-8", "replace")
        # PostgreSQL alone goes away under the paused push; the app and Redis stay up
        record = json.loads((data_dir / manage.STATE_FILE).read_text())["processes"]["postgres"]
        assert processes.terminate([record]) == [record["pid"]]
        proc.send_signal(signal.SIGCONT)
        rc = proc.wait(timeout=120)
        out, err = proc.stdout.read().decode(), watch.text()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)
    assert rc == 1, (rc, out, err[-3000:])
    assert key not in out + err and "Traceback" not in err
    errors = re.findall(r"error: [^\r\n]*", err)
    assert len(errors) == 1, err[-3000:]
    line = errors[0]
    assert f"127.0.0.1:{pg_server.postgres_port}" in line and "PostgreSQL" in line and "database" in line, line
    assert "is not answering" in line and "rerunning is safe" in line, line
    assert pg.SUPERUSER + ":" not in line  # no password-bearing URL
    print(f"the push stopped with: {line}")

    # the database comes back (serve restarts what is left of the server, on the same port); the rerun completes
    again = serve(data_dir, port=pg_server.port)
    assert again.url == url and status(data_dir).running
    r = CliRunner().invoke(cli, ["-q", *args], env={"ARGILLA_API_URL": url, "ARGILLA_API_KEY": key})
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert re.search(r"pushed 48 records to curator/" + name, r.stdout), r.stdout
    assert server_count(sdk(again), name, WS) == 48


@pytest.mark.argilla
def test_an_existing_postgresql_by_url(pg_server: ServerInfo) -> None:
    """--database-url: the module's PostgreSQL taken as an existing one, with a database of its own."""
    password = (pg_server.data_dir / pg.PASSWORD_FILE).read_text().strip()
    port = status(pg_server.data_dir).info.postgres_port  # type: ignore[union-attr]
    db_url = f"postgresql://{pg.SUPERUSER}:{password}@127.0.0.1:{port}/argilla_ext"
    base = reachable_dir("curator-pgurl-")
    data_dir = base / "data"
    try:
        info = serve(data_dir, database_url=db_url)
        assert info.database == "external" and password not in info.database_shown
        assert set(status(data_dir).processes) == {"redis", "app", "worker"}  # nothing started for the database
        assert password not in (data_dir / manage.STATE_FILE).read_text() + (data_dir / "database.json").read_text()
        assert httpx.get(f"{info.url}/api/v1/me", headers={"X-Argilla-Api-Key": info.api_key}).status_code == 200
        stop(data_dir)
        with pytest.raises(InputError, match="pass --database-url again"):
            serve(data_dir)
    finally:
        stop(data_dir)
        shutil.rmtree(base, ignore_errors=True)
    assert status(pg_server.data_dir).running  # the database it borrowed is untouched


@pytest.mark.argilla
def test_restart_reuses_the_data_and_stop_ends_postgresql(pg_server: ServerInfo) -> None:
    data_dir = pg_server.data_dir
    before = {ds.name: server_count(sdk(pg_server), ds.name, WS) for ds in sdk(pg_server).workspaces(WS).datasets}
    assert before and all(n == 48 for n in before.values())
    stopped = stop(data_dir)
    assert set(stopped) == {"redis", "postgres", "app", "worker"}
    deadline = time.monotonic() + 10
    while _left_in(data_dir) and time.monotonic() < deadline:  # orphaned zombies are reaped by init
        time.sleep(0.2)
    assert _left_in(data_dir) == []
    assert not (data_dir / "postgres" / "postmaster.pid").exists()  # a clean shutdown

    again = serve(data_dir, port=pg_server.port)  # no --database: the directory's own
    assert again.database == "postgresql"
    assert {ds.name: server_count(sdk(again), ds.name, WS) for ds in sdk(again).workspaces(WS).datasets} == before


# ------------------------------------------------------------------------------- the SQLite default
@pytest.mark.argilla
def test_the_default_sqlite_server_runs_in_wal_mode(argilla_server: ServerInfo) -> None:
    import sqlite3

    assert argilla_server.database == "sqlite"
    with sqlite3.connect(argilla_server.data_dir / "argilla.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    app = status(argilla_server.data_dir).info.pids["app"]  # type: ignore[union-attr]
    environ = Path(f"/proc/{app}/environ").read_bytes().split(b"\0")
    assert b"ARGILLA_DATABASE_SQLITE_TIMEOUT=30" in environ


# ---------------------------------------------------------------------------- choices, no server
def test_database_choices_are_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="leave out --database sqlite"):
        resolve(tmp_path, "sqlite", "postgresql://u:p@h/db")
    with pytest.raises(InputError, match="not a PostgreSQL URL") as err:
        resolve(tmp_path, None, "mysql://u:secret@h/db")
    assert "secret" not in str(err.value)
    assert resolve(tmp_path, None, "postgres://u:p@h:5433/db").url == "postgresql+asyncpg://u:p@h:5433/db"
    assert redact("postgresql+asyncpg://u:secret@h:5433/db") == "postgresql://u@h:5433/db"
    (tmp_path / "argilla.db").touch()
    assert resolve(tmp_path, None, None).kind == "sqlite"
    with pytest.raises(InputError, match="holds a sqlite database; pass --database sqlite"):
        resolve(tmp_path, "postgresql", None)


def test_serve_options_refuse_bad_input_in_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["argilla", "serve", "--data-dir", str(tmp_path / "d"), "--database-url", "mysql://u:secret@h/db"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and "secret" not in r.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a PostgreSQL URL" in lines[0], r.output


@pytest.mark.skipif(os.geteuid() != 0, reason="the postgres user's view only matters under root")
def test_a_data_dir_the_postgres_user_cannot_enter_is_refused() -> None:
    base = reachable_dir("curator-closed-")
    try:
        closed = base / "closed"
        closed.mkdir(mode=0o700)
        with pytest.raises(InputError, match=f"cannot enter {closed} .*chmod o\\+x {closed}$"):
            pg.check_reachable(closed / "data", pg.run_as())
        pg.check_reachable(base / "data", pg.run_as())  # an open path passes
    finally:
        shutil.rmtree(base)


# ------------------------------------------------------------------------ the listener under load
LOAD_ANNOTATORS = 8  # concurrent annotators for the listener's load test
LOAD_SUBMITS = 5  # submissions each one makes; every third is then edited


@pytest.mark.argilla
def test_listen_killed_and_restarted_mid_load_counts_right(pg_server: ServerInfo, tmp_path: Path) -> None:
    """A team submits and edits through the UI's endpoints while `curator argilla listen` runs as its
    own process; it is killed (SIGKILL) after a third of the writes and started again. No 5xx, every
    acknowledged answer pulled as last acknowledged, the restarted listener's tally equals the recount
    from pull, every re-ranking it queued is written, and a fresh start rebuilds the same tally."""
    from curator.integrations.argilla.listen import Listener
    from tests.integrations.listening import drop_webhooks, free_port, log_entries, recount, wait_for
    from tests.integrations.test_listen_tally import _kill, _listen, _serving

    name = f"load-{uuid.uuid4().hex[:6]}"
    client = sdk(pg_server)
    cands = big_candidates(tmp_path / "cands.jsonl")
    push(cands, None, name, WS, client=client, store=_RandomStore([c.id for c in cands]), batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds_id = str(client.datasets(name=name, workspace=WS).id)
    suffix = uuid.uuid4().hex[:6]
    team = [make_annotator(pg_server, client, f"l{i}-{suffix}", WS) for i in range(LOAD_ANNOTATORS)]
    log, out, port = tmp_path / "listen.jsonl", tmp_path / "listen.out", free_port()
    procs = [_listen(name, pg_server, port, log, out)]
    wait_for(lambda: _serving(procs[-1], port, out), "the listener to serve")

    writes: list[tuple[str, str, str, int, list[str]]] = []  # (user id, record's external id, queue|submit|update, status, ranking)
    lock, start = threading.Lock(), threading.Barrier(LOAD_ANNOTATORS + 1)
    killed = threading.Event()
    queue_filter = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
                                        {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]}]}}

    def annotate(k: int, user_id: str, key: str) -> None:
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=pg_server.url, headers={"X-Argilla-Api-Key": key}, timeout=120) as http:
            start.wait()
            for j in range(LOAD_SUBMITS):
                page = http.post(f"/api/v1/me/datasets/{ds_id}/records/search", params={"include": [], "limit": 50}, json=queue_filter)
                with lock:
                    writes.append((user_id, "", "queue", page.status_code, []))
                items = page.json()["items"] if page.status_code == 200 else []
                if not items:
                    return
                rec = items[int(rng.integers(len(items)))]["record"]
                rid, ext = rec["id"], str(rec.get("external_id") or rec["id"])  # pull names records by external id
                ranking = [f"candidate_{i}" for i in rng.permutation(4) + 1]
                body = {"status": "submitted", "values": {"ranking": {"value": [{"value": s, "rank": r + 1} for r, s in enumerate(ranking)]},
                                                          "best_strategy": {"value": str(rng.choice(["direct", "cot", "clarify", "evaluate"]))}}}
                sent = http.post(f"/api/v1/records/{rid}/responses", json=body)
                with lock:
                    writes.append((user_id, ext, "submit", sent.status_code, ranking))
                if sent.status_code == 201 and j % 3 == 2:
                    edited = ranking[1:] + ranking[:1]
                    body["values"]["ranking"]["value"] = [{"value": s, "rank": r + 1} for r, s in enumerate(edited)]
                    put = http.put(f"/api/v1/responses/{sent.json()['id']}", json=body)
                    with lock:
                        writes.append((user_id, ext, "update", put.status_code, edited))
                if k == 0 and j == LOAD_SUBMITS // 3:
                    killed.wait(120)  # annotator 0 pauses until the listener is down, so writes land while it is

    threads = [threading.Thread(target=annotate, args=(k, uid, key)) for k, (uid, key) in enumerate(team)]
    try:
        for t in threads:
            t.start()
        start.wait()
        wait_for(lambda: sum(1 for w in list(writes) if w[2] == "submit") >= LOAD_ANNOTATORS * LOAD_SUBMITS // 3, "a third of the submissions")
        _kill(procs[-1])
        killed.set()
        procs.append(_listen(name, pg_server, port, log, out))
        wait_for(lambda: _serving(procs[-1], port, out), "the restarted listener to serve")
        for t in threads:
            t.join(timeout=300)
        assert not [w for w in writes if w[3] >= 500], [w for w in writes if w[3] >= 500][:3]
        assert all(w[3] in (200, 201) for w in writes), [w for w in writes if w[3] not in (200, 201)][:3]

        expected = dict(sorted(recount(client, name, WS, tmp_path / "pulled.jsonl").items()))
        last_acked = {(u, r): rk for u, r, kind, _, rk in writes if kind != "queue"}
        rows = [json.loads(x) for x in (tmp_path / "pulled.jsonl").read_text().splitlines()]
        pulled = {(a["user_id"], r["record_id"]): [x["slot"] for x in a["ranking"]] for r in rows for a in r["annotations"]}
        assert pulled == last_acked  # every acknowledged answer, as last acknowledged, and nothing else

        def counted() -> dict | None:  # the tally of the last event line (flush lines carry the tally as the flush began)
            lines = [e for e in log_entries(log) if "neighbour" not in e and e.get("event") != "flush" and "tally" in e]
            return lines[-1]["tally"] if lines else None

        wait_for(lambda: counted() == expected, f"the restarted listener's tally to reach the recount {expected}")
        starts = [e for e in log_entries(log) if e["event"] == "start"]
        assert len(starts) == 2 and starts[1]["submitted_responses"] >= starts[0]["submitted_responses"]

        def flushed() -> bool:
            entries = log_entries(log)
            last_start = max(i for i, e in enumerate(entries) if e["event"] == "start")
            run = entries[last_start:]
            top = max([e["seq"] for e in run if isinstance(e.get("seq"), int) and e.get("queued")] + [0])
            return any(e["event"] == "flush" and e["through"] >= top for e in run) or top == 0

        wait_for(flushed, "the restarted listener to write every re-ranking it queued")
        fresh = Listener(client, name, workspace=WS, log_path=tmp_path / "fresh.jsonl")
        assert fresh.rebuilt["tally"] == expected and fresh.rebuilt["submitted_responses"] == len(last_acked)
    finally:
        killed.set()
        for proc in procs:
            if proc.poll() is None:
                _kill(proc)
        drop_webhooks(client, f"http://127.0.0.1:{port}")


class _RandomStore:
    """What push reads of a gradient store: seeded random vectors, one per candidate (the listener's neighbours)."""

    def __init__(self, ids: list[str], dim: int = 16) -> None:
        self.ids_, self.dim, self.path, self.manifest = ids, dim, "random-store", {"role": "candidates"}

    def ids(self) -> list[str]:
        return self.ids_

    def vectors(self) -> np.ndarray:
        return np.random.default_rng(0).standard_normal((len(self.ids_), self.dim)).astype(np.float32)
