"""A pull while annotators are still submitting, on a real argilla-server 2.8.0 (issue 6, "Failing servers (Argilla)").

Two annotators, in threads, each save a draft and then submit a complete response for record after
record, while ``curator argilla pull`` runs again and again: every pull's file holds each record once,
either with an annotator's complete response or counted as pending, and the command says how many
were pending. And a push that lands between a pull's pages makes the pull read again, never lose or
double a record. The helpers are in ``test_failures.py``.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest

from curator.integrations.argilla.mapping import BEST, COMMENT, RANKING

from .test_failures import SLOTS, STRATEGIES, WS, candidates, make_user, run_cli


N_LIVE = 60


@pytest.mark.argilla
def test_pull_while_annotators_submit_is_consistent_and_counts_pending(argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    from curator.integrations.argilla.pull import pull
    from curator.integrations.argilla.push import push

    url, owner = argilla_server.url, argilla_server.api_key
    name = f"live-{uuid.uuid4().hex[:6]}"
    cands = candidates(N_LIVE, name)
    assert push(cands, None, name, WS, client=argilla_client, batch_size=50).created == N_LIVE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = argilla_client.datasets(name=name, workspace=WS)
        uuids = {str(r.id): str(r._model.id) for r in ds.records(with_suggestions=False, with_responses=False)}
    assert len(uuids) == N_LIVE
    users = {u["id"]: u for u in (make_user(argilla_server, "annotator", WS) for _ in range(2))}
    (a_id, a), (b_id, b) = users.items()
    ids = sorted(uuids)
    abandoned = ids[0]  # a draft that is never submitted: pending in every pull
    work = {a_id: [i for i in ids if i != abandoned], b_id: ids[1::2]}  # b annotates every other record

    def final_values(user_id: str, rid: str) -> dict[str, Any]:
        order = random.Random(f"{user_id}{rid}").sample(SLOTS, len(SLOTS))
        return {RANKING: {"value": [{"value": s, "rank": k + 1} for k, s in enumerate(order)]},
                BEST: {"value": STRATEGIES[ids.index(rid) % 4]}, COMMENT: {"value": f"{users[user_id]['username']} on {rid[:8]}"}}

    draft_values = {RANKING: {"value": [{"value": s, "rank": 1} for s in SLOTS]}}  # all tied: a half-made ranking
    started: dict[tuple[str, str], float] = {}  # (user, record) → when the submission was sent
    done: dict[tuple[str, str], float] = {}  # (user, record) → when the server confirmed it
    errors: list[str] = []

    def annotate(user_id: str) -> None:
        h = {"X-Argilla-Api-Key": users[user_id]["api_key"]}
        with httpx.Client(base_url=url, headers=h, timeout=30) as http:
            try:
                for rid in random.Random(user_id).sample(work[user_id], len(work[user_id])):
                    r = http.post(f"/api/v1/records/{uuids[rid]}/responses", json={"status": "draft", "values": draft_values})
                    assert r.status_code == 201, r.text
                    started[(user_id, rid)] = time.monotonic()
                    r = http.put(f"/api/v1/responses/{r.json()['id']}", json={"status": "submitted", "values": final_values(user_id, rid)})
                    assert r.status_code == 200, r.text
                    done[(user_id, rid)] = time.monotonic()
                    time.sleep(0.01)
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(f"{type(exc).__name__}: {exc}")

    # the abandoned draft, before anyone starts
    r = httpx.post(f"{url}/api/v1/records/{uuids[abandoned]}/responses", json={"status": "draft", "values": draft_values}, headers={"X-Argilla-Api-Key": a["api_key"]})
    assert r.status_code == 201, r.text

    threads = [threading.Thread(target=annotate, args=(u,), daemon=True) for u in users]
    for t in threads:
        t.start()
    pulls: list[dict[str, Any]] = []
    api = ["--api-url", url, "--api-key", owner]
    while True:
        last = not any(t.is_alive() for t in threads)
        out = tmp_path / f"pulled-{len(pulls)}.jsonl"
        t0 = time.monotonic()
        confirmed_before = set(done)
        r = run_cli(["argilla", "pull", "--dataset", name, "--out", str(out), "--page-size", "7", *api])
        t1 = time.monotonic()
        assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        pulls.append({"t0": t0, "t1": t1, "rows": rows, "stdout": r.stdout, "before": confirmed_before})
        if last:
            break
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors

    prev: set[tuple[str, str]] = set()
    partial = 0
    for n, p in enumerate(pulls):
        rows = p["rows"]
        # each record exactly once
        assert len(rows) == N_LIVE and {row["record_id"] for row in rows} == set(uuids), n
        got: set[tuple[str, str]] = set()
        for row in rows:
            rid = row["record_id"]
            # submitted ⇔ at least one complete response; pending ⇔ none (a draft is not a response yet)
            assert row["status"] in ("submitted", "pending"), row["status"]
            assert (row["status"] == "submitted") == bool(row["annotations"]) == bool(row["ranking"]), row
            for ann in row["annotations"]:
                key = (ann["user_id"], rid)
                want = final_values(ann["user_id"], rid)
                assert [(x["slot"], x["rank"]) for x in ann["ranking"]] == [(v["value"], v["rank"]) for v in want[RANKING]["value"]], row
                assert ann["best_strategy"] == want[BEST]["value"] and ann["comment"] == want[COMMENT]["value"], row
                assert key in started and started[key] < p["t1"], "a response no annotator had sent yet"
                got.add(key)
        # every submission confirmed before the pull began is in it, and none seen earlier went missing
        assert p["before"] <= got and prev <= got, n
        prev = got
        pending = sum(row["status"] == "pending" for row in rows)
        submitted = N_LIVE - pending
        assert f"pulled {N_LIVE} records into " in p["stdout"] and f": {submitted} submitted ({len(got)} responses), 0 discarded, {pending} pending" in p["stdout"], p["stdout"]
        assert ("(no submitted response yet" in p["stdout"]) == (pending > 0), p["stdout"]
        if 1 <= submitted < N_LIVE - 1:
            partial += 1
    assert partial >= 1, f"no pull overlapped the submissions: {[sum(r['status'] == 'submitted' for r in p['rows']) for p in pulls]}"
    print(f"{len(pulls)} pulls, {partial} while submissions were under way: submitted per pull "
          f"{[sum(r['status'] == 'submitted' for r in p['rows']) for p in pulls]}")

    # at the end: everything but the abandoned draft is submitted, with every response
    final = {row["record_id"]: row for row in pulls[-1]["rows"]}
    assert final[abandoned]["status"] == "pending" and final[abandoned]["annotations"] == []
    assert prev == set(done) and len(done) == len(work[a_id]) + len(work[b_id])
    res = pull(name, WS, argilla_client, tmp_path / "final.parquet", page_size=7)
    assert (res.records, res.submitted, res.pending, res.discarded, res.responses, res.reads) == (N_LIVE, N_LIVE - 1, 1, 0, len(done), 1)


@pytest.mark.argilla
def test_records_added_while_pulling_are_read_again_never_lost_or_doubled(argilla_server: Any, argilla_client: Any, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A push landing between a pull's pages: the pull reads again; if the records never hold still, it says so."""
    import argilla as rg

    from curator.integrations.argilla.client import ArgillaError
    from curator.integrations.argilla.pull import pull
    from curator.integrations.argilla.push import push

    name = f"moving-{uuid.uuid4().hex[:6]}"
    cands = candidates(14, name)
    per = len(STRATEGIES)
    push(cands[: 10 * per], None, name, WS, client=argilla_client)
    other = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)  # another user's push, on its own connection
    real_list = argilla_client.api.records.list
    groups = {"n": 10}

    def list_then_push(*a: Any, limit: int, **kw: Any) -> Any:
        page = real_list(*a, limit=limit, **kw)
        if kw.get("offset") == 0 and groups["n"] < budget["groups"]:  # the first page of a read is in: a push lands
            groups["n"] += 1
            push(cands[: groups["n"] * per], None, name, WS, client=other)
        return page

    monkeypatch.setattr(argilla_client.api.records, "list", list_then_push)
    budget = {"groups": 11}  # one push, during the first read only
    res = pull(name, WS, argilla_client, tmp_path / "once.jsonl", page_size=3)
    rows = [json.loads(x) for x in (tmp_path / "once.jsonl").read_text().splitlines()]
    assert (res.records, res.reads, res.pending) == (11, 2, 11)
    assert len({r["record_id"] for r in rows}) == len(rows) == 11

    budget["groups"] = 14  # a push during every read: three reads, then a clear runtime error
    with pytest.raises(ArgillaError, match=rf"the records of dataset '{name}' at {re.escape(argilla_server.url)} kept changing during 3 reads") as err:
        pull(name, WS, argilla_client, tmp_path / "never.jsonl", page_size=3)
    assert err.value.exit_code == 1 and "rerun the pull" in str(err.value)
    assert not (tmp_path / "never.jsonl").exists()
