"""The annotation loop: the tally and re-ranking logic, and the webhook on a real server."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from curator.integrations.argilla.listen import Listener, Tally, adjusted_scores, build_app, rerank, top_slot
from curator.integrations.argilla.push import push
from tests.integrations.test_roundtrip import demo_set, make_annotator, respond  # noqa: F401  (fixture)


def test_tally_preference_is_share_minus_uniform():
    t = Tally()
    assert t.preference(["a", "b"]) == {"a": 0.0, "b": 0.0}
    t.add("a", "a")
    t.add("b", None)
    t.add(None, "a")
    assert t.votes == Counter({"a": 3, "b": 1})
    assert t.preference(["a", "b", "c"]) == pytest.approx({"a": 0.75 - 1 / 3, "b": 0.25 - 1 / 3, "c": -1 / 3})


def test_rerank_moves_preferred_strategy_up():
    slots = {"candidate_1": {"strategy": "direct", "score": 0.5}, "candidate_2": {"strategy": "cot", "score": 0.2}, "candidate_3": {"strategy": "clarify", "score": None}}
    assert rerank(slots, {"direct": 0.0, "cot": 0.0, "clarify": 0.0}, 1.0) == ["candidate_1", "candidate_2", "candidate_3"]
    pref = {"direct": -0.25, "cot": 0.5, "clarify": -0.25}
    assert rerank(slots, pref, 1.0) == ["candidate_2", "candidate_1", "candidate_3"]  # 0.7 > 0.25 > -0.25
    assert rerank(slots, pref, 0.0) == ["candidate_1", "candidate_2", "candidate_3"]  # weight 0: unchanged
    assert adjusted_scores(slots, pref, 1.0) == pytest.approx({"candidate_1": 0.25, "candidate_2": 0.7, "candidate_3": -0.25})


def test_top_slot_reads_ranks():
    assert top_slot([{"value": "candidate_2", "rank": 2}, {"value": "candidate_3", "rank": 1}]) == "candidate_3"
    assert top_slot(["candidate_4", "candidate_1"]) == "candidate_4"
    assert top_slot(None) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.argilla
def test_webhook_updates_tally_and_neighbour_suggestions(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    import uvicorn

    cands, store, ranking = demo_set["candidates"], demo_set["store"], demo_set["ranking"]
    name, ws = f"listen-{uuid.uuid4().hex[:8]}", "curator"
    push(cands, ranking, name, ws, store=store, client=argilla_client)
    log = tmp_path / "listen.jsonl"
    listener = Listener(argilla_client, name, workspace=ws, k=2, weight=5.0, log_path=log)
    assert listener.index is not None and listener.index.ntotal == 6
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(listener, f"http://127.0.0.1:{port}"), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        first = listener.ids[0]
        before = {rid: listener.ranking_suggestion(rid) for rid in listener.ids}
        # the annotator ranks the 'cot' slot first, and labels cot the best strategy
        cot_slot = next(s for s, info in listener.meta[first].items() if s.startswith("strategy_") and info == "cot").replace("strategy_", "candidate_")
        others = [f"candidate_{i}" for i in range(1, 5) if f"candidate_{i}" != cot_slot]
        _, key = make_annotator(argilla_server, argilla_client, f"ann-{uuid.uuid4().hex[:6]}", ws)
        respond(argilla_server, first, key, "submitted", [(cot_slot, 1)] + [(s, k + 2) for k, s in enumerate(others)], best="cot")
        deadline = time.time() + 60
        def logged() -> list[dict]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

        # k=2 pending neighbours get re-ranked, one log entry each (or an error entry)
        while time.time() < deadline and not (len([e for e in logged() if "neighbour" in e]) >= 2 or any("error" in e for e in logged())):
            time.sleep(0.25)
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        changes = [e for e in entries if "neighbour" in e]
        assert changes, entries
        assert listener.tally.votes["cot"] == 2  # the top choice and the best-strategy label
        for change in changes:
            nb = change["neighbour"]
            assert nb != first and change["record"] == first and change["top_strategy"] == "cot"
            assert listener.ranking_suggestion(nb) == change["new_ranking"]
            assert sorted(change["new_ranking"]) == [f"candidate_{i}" for i in range(1, listener.n_slots + 1)]  # every slot, placeholders last
            assert change["old_ranking"] == before[nb]
            nb_cot = next(k for k, v in listener.meta[nb].items() if k.startswith("strategy_") and v == "cot").replace("strategy_", "candidate_")
            assert change["new_ranking"][0] == nb_cot  # with a strong weight, cot now leads
        assert {c["neighbour"] for c in changes} == set(listener.neighbours(first))
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_listener_requests_follow_its_retry_policy(demo_set: dict[str, Any], argilla_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`listen --retries/--retry-delay` reach every request: transient failures are retried, then one error."""
    import httpx

    from curator.integrations.argilla.client import ArgillaError, RetryPolicy

    name, ws = f"listen-retry-{uuid.uuid4().hex[:8]}", "curator"
    push(demo_set["candidates"], demo_set["ranking"], name, ws, store=demo_set["store"], client=argilla_client)
    listener = Listener(argilla_client, name, workspace=ws, retry=RetryPolicy(attempts=3, base_delay=0.0))
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
