"""The annotation loop on a real server: the webhook re-ranks neighbours, records pushed later are
found, and every request the listener makes is retried on a transient failure (5xx included).

The tally's own rules are tested without a server in ``test_tally.py``; its agreement with a
recount from pull after updates, deletes, discards, redeliveries and restarts in ``test_listen_tally.py``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from curator.integrations.argilla.client import ArgillaError, RetryPolicy
from curator.integrations.argilla.listen import Listener
from curator.integrations.argilla.push import push
from tests.integrations.listening import answer, log_entries, ranking_with, recount, running, wait_for
from tests.integrations.test_roundtrip import demo_set, make_annotator  # noqa: F401  (fixture)


@pytest.mark.argilla
def test_webhook_updates_tally_and_neighbour_suggestions(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    cands, store, ranking = demo_set["candidates"], demo_set["store"], demo_set["ranking"]
    name, ws = f"listen-{uuid.uuid4().hex[:8]}", "curator"
    push(cands, ranking, name, ws, store=store, client=argilla_client)
    log = tmp_path / "listen.jsonl"
    listener = Listener(argilla_client, name, workspace=ws, k=2, weight=5.0, log_path=log)
    assert listener.index is not None and listener.index.ntotal == 6
    assert log_entries(log)[-1] | {"time": None} == {"time": None, "event": "start", "action": "tally rebuilt from the server", "records": 6, "submitted_responses": 0, "tally": {}, "seq": 0, "queued": []}
    with running(listener) as events:
        first = listener.ids[0]
        before = {rid: listener.ranking_suggestion(rid) for rid in listener.ids}
        _, key = make_annotator(argilla_server, argilla_client, f"ann-{uuid.uuid4().hex[:6]}", ws)
        # the annotator ranks the 'cot' slot first, and labels cot the best strategy
        resp = answer(argilla_server, key, first, "submitted", ranking_with(listener, first, "cot"), best="cot")
        events.wait("response.created", resp["id"])
        changes = [e for e in log_entries(log) if "neighbour" in e]
        assert len(changes) == 2, log_entries(log)
        assert listener.tally.as_dict() == {"cot": 2}  # the top choice and the best-strategy label
        for change in changes:
            nb = change["neighbour"]
            assert nb != first and change["record"] == first and change["top_strategy"] == "cot" and change["votes"] == ["cot", "cot"]
            assert change["tally"] == {"cot": 2}
            assert listener.ranking_suggestion(nb) == change["new_ranking"]
            assert sorted(change["new_ranking"]) == [f"candidate_{i}" for i in range(1, listener.n_slots + 1)]  # every slot, placeholders last
            assert change["old_ranking"] == before[nb]
            assert change["new_ranking"][0] == ranking_with(listener, nb, "cot")[0]  # with a strong weight, cot now leads
        assert {c["neighbour"] for c in changes} == set(listener.neighbours(first))


@pytest.mark.argilla
def test_a_record_pushed_after_start_is_found_reranked_and_counted(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    """The listener reads the records at start; one pushed later is indexed at the next event, so it
    is re-ranked as a neighbour, and a response to it counts and re-ranks its own neighbours."""
    cands, store, ranking, groups = demo_set["candidates"], demo_set["store"], demo_set["ranking"], demo_set["groups"]
    name, ws = f"listen-new-{uuid.uuid4().hex[:8]}", "curator"
    early = [c for c in cands if c.group != groups[-1]]
    push(early, ranking[ranking["group"] != groups[-1]], name, ws, store=store, client=argilla_client)
    log = tmp_path / "listen.jsonl"
    listener = Listener(argilla_client, name, workspace=ws, k=5, log_path=log, retry=RetryPolicy(attempts=3, base_delay=0.0))
    known = set(listener.ids)
    assert len(known) == 5 and listener.index.ntotal == 5
    with running(listener) as events:
        push(cands, ranking, name, ws, store=store, client=argilla_client)  # 5 updated, 1 new
        def created() -> dict | None:  # (argilla-server also sends record.created for a re-pushed record it did not change)
            return next((d for k, d in list(events.seen) if k == "record.created" and str(d["dataset"]["id"]) == str(listener.dataset.id) and str(d["id"]) not in known), None)

        new = str(wait_for(created, "the record.created event of the new record")["id"])
        assert new in listener.unknown and new not in listener.vectors
        _, key = make_annotator(argilla_server, argilla_client, f"ann-{uuid.uuid4().hex[:6]}", ws)
        old = listener.ids[0]
        resp = answer(argilla_server, key, old, "submitted", ranking_with(listener, old, "cot"), best="cot")
        events.wait("response.created", resp["id"])
        assert listener.index.ntotal == 6 and not listener.unknown
        reload = next(e for e in log_entries(log) if e["event"] == "reload")
        assert (reload["records"], reload["added"]) == (6, 1)
        changes = {e["neighbour"]: e for e in log_entries(log) if e.get("record") == old and "neighbour" in e}
        assert set(changes) == set(listener.ids) - {old}  # k=5: every pending record, the new one included
        assert listener.ranking_suggestion(new) == changes[new]["new_ranking"]
        # a response to the new record counts, and re-ranks its pending neighbours
        resp = answer(argilla_server, key, new, "submitted", ranking_with(listener, new, "direct"), best="direct")
        events.wait("response.created", resp["id"])
        assert listener.tally.votes == recount(argilla_client, name, ws, tmp_path / "pulled.jsonl") == {"cot": 2, "direct": 2}
        from_new = [e for e in log_entries(log) if e.get("record") == new and "neighbour" in e]
        assert {e["neighbour"] for e in from_new} == set(listener.ids) - {old, new}
        assert all(e["votes"] == ["direct", "direct"] and e["tally"] == {"cot": 2, "direct": 2} for e in from_new)


@pytest.mark.argilla
def test_listener_requests_follow_its_retry_policy(demo_set: dict[str, Any], argilla_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`listen --retries/--retry-delay` reach every request: transient failures are retried, then one error."""
    name, ws = f"listen-retry-{uuid.uuid4().hex[:8]}", "curator"
    push(demo_set["candidates"], demo_set["ranking"], name, ws, store=demo_set["store"], client=argilla_client)
    listener = Listener(argilla_client, name, workspace=ws, log_path=tmp_path / "listen.jsonl", retry=RetryPolicy(attempts=3, base_delay=0.0))
    rid = listener.ids[0]
    expected = listener.ranking_suggestion(rid)
    assert expected
    http = argilla_client.api.http_client
    real_get, failures = http.get, {"left": 2}

    def flaky_get(url: str, *args: Any, **kwargs: Any) -> Any:  # the real server, behind a connection that drops
        if failures["left"] > 0 and url.endswith("/suggestions"):
            failures["left"] -= 1
            raise httpx.ConnectError("connection refused (test)")
        return real_get(url, *args, **kwargs)

    monkeypatch.setattr(http, "get", flaky_get)
    assert listener.ranking_suggestion(rid) == expected  # failed twice, the third attempt read it
    assert failures["left"] == 0
    failures["left"] = 3
    with pytest.raises(ArgillaError, match=r"reading suggestions of .*gave up after 3 attempts"):
        listener.ranking_suggestion(rid)


def _answered(status: int, url: str, method: str = "GET") -> httpx.Response:
    """What the server sends back under load: ``database is locked`` with a 500 (or another status)."""
    return httpx.Response(status, json={"detail": "(sqlite3.OperationalError) database is locked"}, request=httpx.Request(method, url))


@pytest.mark.argilla
def test_a_plain_500_is_retried_on_every_path_the_listener_uses(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A 500 answer, through the SDK (its ``InternalServerError``) or the listener's own requests (an
    ``httpx`` response with status 500), is retried like a dropped connection; a 422 is not."""
    from argilla._exceptions import InternalServerError

    name, ws = f"listen-500-{uuid.uuid4().hex[:8]}", "curator"
    push(demo_set["candidates"], demo_set["ranking"], name, ws, store=demo_set["store"], client=argilla_client)
    http, datasets = argilla_client.api.http_client, argilla_client.api.datasets
    real = {"get": http.get, "put": http.put, "dataset": datasets.get}
    calls = {"get": 0, "put": 0, "dataset": 0, "records": 0}
    fail = {"get": 0, "put": 0, "dataset": 1, "records": 1}  # how many of the next calls answer 500
    status = {"get": 500, "put": 500}

    def raw(method: str) -> Any:
        def call(url: str, *args: Any, **kwargs: Any) -> Any:
            kind = "records" if url.endswith("/records") and method == "get" else method if "/suggestions" in url else None
            if kind is not None:
                calls[kind] += 1
                if fail[kind] > 0:
                    fail[kind] -= 1
                    return _answered(status.get(kind, 500), url, method.upper())
            return real[method](url, *args, **kwargs)
        return call

    sdk: list[str] = []  # the outcomes of the SDK's dataset reads, in order

    def dataset_get(dataset_id: Any) -> Any:
        calls["dataset"] += 1
        if fail["dataset"] > 0:
            fail["dataset"] -= 1
            sdk.append("500")
            raise InternalServerError("Internal server error. Details: database is locked", status_code=500)
        sdk.append("ok")
        return real["dataset"](dataset_id)

    monkeypatch.setattr(http, "get", raw("get"))
    monkeypatch.setattr(http, "put", raw("put"))
    monkeypatch.setattr(datasets, "get", dataset_get)
    # at start: the SDK's dataset read raised InternalServerError once, the listener's record read got a 500 once
    listener = Listener(argilla_client, name, workspace=ws, k=2, log_path=tmp_path / "listen.jsonl", retry=RetryPolicy(attempts=3, base_delay=0.0))
    assert sdk[:2] == ["500", "ok"] and calls["records"] == 2 and len(listener.ids) == 6
    rid = listener.ids[0]
    # its own GET: a 500 once (before, the 500 answer was returned, and raised outside the retry)
    fail["get"] = 1
    assert listener.ranking_suggestion(rid) is not None and calls["get"] == 2
    # its own PUT: a 500 once (before, httpx's HTTPStatusError was not taken for transient)
    slots = [f"candidate_{i}" for i in range(listener.n_slots, 0, -1)]
    fail["put"] = 1
    listener.put_ranking(rid, slots, [0.5] * len(slots))
    assert calls["put"] == 2 and listener.ranking_suggestion(rid) == slots
    # a whole event: every read and write of the re-ranking answers 500 once; the vote counts once
    _, key = make_annotator(argilla_server, argilla_client, f"ann-{uuid.uuid4().hex[:6]}", ws)
    resp = answer(argilla_server, key, rid, "submitted", ranking_with(listener, rid, "cot"), best="cot")
    payload = {"id": resp["id"], "status": "submitted", "values": resp["values"], "updated_at": resp["updated_at"],
               "record": {"id": rid, "dataset": {"id": str(listener.dataset.id)}}, "user": {"id": resp["user_id"], "username": "ann"}}
    calls.update(get=0, put=0)
    fail.update(put=2)
    assert len(listener.handle(payload, "response.created")) == 2
    assert calls == {**calls, "get": 0, "put": 4}  # 2 neighbours: no read (the start read took the suggestions), 2 failed + 2 good writes
    assert listener.tally.votes == recount(argilla_client, name, ws, tmp_path / "pulled.jsonl") == {"cot": 2}
    # a 422 is the request's fault: one attempt, then the error
    status["get"], fail["get"], calls["get"] = 422, 1, 0
    with pytest.raises(ArgillaError, match=r"reading suggestions of .*HTTP 422") as err:
        listener.ranking_suggestion(rid)
    assert calls["get"] == 1 and "gave up" not in str(err.value)
