"""Helpers for the listener's tests on a real server: run its webhook, answer as the UI does, recount from pull."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from curator.integrations.argilla.listen import Listener
from curator.integrations.argilla.webhook import build_app
from curator.integrations.argilla.pull import pull

WAIT_S = 60.0  # how long a test waits for the server's webhook worker before it fails (never a timing assertion)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


class Events:
    """The events the listener's webhook handled, as (type, payload), in order."""

    def __init__(self, listener: Listener | None = None) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.listener = listener

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        self.seen.append((kind, data))

    def wait(self, kind: str, obj_id: str, settled: bool = True) -> dict[str, Any]:
        """The payload of the first handled ``kind`` event about response or record ``obj_id``; with
        ``settled``, once the re-rankings it queued are written too (the listener's queue is empty)."""
        def found() -> dict[str, Any] | None:
            return next((d for k, d in list(self.seen) if k == kind and str(d.get("id")) == str(obj_id)), None)

        got = wait_for(found, f"the listener to handle {kind} {obj_id}")
        if settled and self.listener is not None:
            wait_for(self.listener.settled, f"the listener to write the re-rankings {kind} {obj_id} queued")
        return got


@contextlib.contextmanager
def running(listener: Listener) -> Iterator[Events]:
    """The listener's webhook served on a free port and registered on the server; unregistered at the end."""
    import uvicorn

    events = Events(listener)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(build_app(listener, url, on_event=events), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "the listener's web server to start")
        yield events
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        drop_webhooks(listener.client, url)


def drop_webhooks(client: Any, url: str) -> None:
    """Delete the server's webhooks for a listener at ``url`` (the worker would keep calling a dead port)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for hook in list(client.webhooks):
            if hook.url.startswith(url + "/"):
                hook.delete()


def answer(server: Any, key: str, record_id: str, status: str, ranking: list[str] | None = None, best: str | None = None) -> dict[str, Any]:
    """POST /api/v1/records/{id}/responses as the UI does; the created response."""
    r = httpx.post(f"{server.url}/api/v1/records/{record_id}/responses", json=_body(status, ranking, best), headers={"X-Argilla-Api-Key": key})
    assert r.status_code == 201, r.text
    return r.json()


def change(server: Any, key: str, response_id: str, status: str, ranking: list[str] | None = None, best: str | None = None) -> dict[str, Any]:
    """PUT /api/v1/responses/{id}: the annotator edits (or discards) their response."""
    r = httpx.put(f"{server.url}/api/v1/responses/{response_id}", json=_body(status, ranking, best), headers={"X-Argilla-Api-Key": key})
    assert r.status_code == 200, r.text
    return r.json()


def remove(server: Any, key: str, response_id: str) -> None:
    """DELETE /api/v1/responses/{id}."""
    r = httpx.delete(f"{server.url}/api/v1/responses/{response_id}", headers={"X-Argilla-Api-Key": key})
    assert r.status_code == 200, r.text


def _body(status: str, ranking: list[str] | None, best: str | None) -> dict[str, Any]:
    if ranking is None:
        return {"status": status, "values": None}
    values: dict[str, Any] = {"ranking": {"value": [{"value": s, "rank": k + 1} for k, s in enumerate(ranking)]}}
    if best:
        values["best_strategy"] = {"value": best}
    return {"status": status, "values": values}


def slots_by_strategy(listener: Listener, record_id: str) -> dict[str, str]:
    """strategy → the slot that holds its candidate in the record."""
    meta = listener.meta[record_id]
    return {v: k.replace("strategy_", "candidate_") for k, v in meta.items() if k.startswith("strategy_") and v}


def ranking_with(listener: Listener, record_id: str, first: str) -> list[str]:
    """Every slot of the record, the ``first`` strategy's ranked first, empty slots last (the server wants them all)."""
    by = slots_by_strategy(listener, record_id)
    empty = [f"candidate_{i}" for i in range(1, listener.n_slots + 1) if f"candidate_{i}" not in by.values()]
    return [by[first]] + sorted(s for s in by.values() if s != by[first]) + empty


def recount(client: Any, dataset: str, workspace: str, out: Path) -> Counter:
    """The votes a pulled file holds: for each annotator of each record, the strategy of the candidate
    they ranked first and their best-strategy label (`curator argilla pull`, then summed here)."""
    pull(dataset, workspace=workspace, client=client, out=out)
    votes: Counter = Counter()
    for line in out.read_text().splitlines():
        row = json.loads(line)
        strategy = {c["slot"]: c["strategy"] for c in row["candidates"]}
        for a in row["annotations"]:
            if a["ranking"]:
                votes[strategy[a["ranking"][0]["slot"]]] += 1  # ranked best first, ties in slot order
            if a["best_strategy"]:
                votes[a["best_strategy"]] += 1
    return votes


def log_entries(path: Path) -> list[dict[str, Any]]:
    """The listener's log, skipping a line a kill tore (the listener ends it before writing on)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out
