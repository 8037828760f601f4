"""`curator argilla listen`: the annotation loop.

A webhook listener (the SDK's webhook support: FastAPI + uvicorn) for ``response.created``,
``response.updated`` and ``response.deleted``, plus ``record.created`` and ``record.deleted`` to
keep its index of records current. For each response event on its dataset it:

1. sets that annotator's entry for that record in the tally (see ``tally``): one entry per
   (record, annotator), replaced by an update, voting for nothing once deleted, discarded or put
   back to draft; a redelivered event sets the same entry again, and a late one (older than the
   entry) is ignored. (The event's payload is used, not a fresh read of the record: argilla-server
   2.8.0's ``GET /api/v1/records/{id}`` answers 500, MissingGreenlet, for a record with vectors.)
2. finds the k nearest records in gradient space (a FAISS inner-product search over the records'
   ``gradient`` vectors) that are still pending (no submitted response). A record it did not know
   (pushed after it started) makes it reload the records, so new records are searched too;
3. re-ranks each such neighbour's ranking suggestion: a candidate's new score is its curator score
   (``score_i``, the z-scored combination of alignment and influence) plus ``weight`` times its
   strategy's preference, the tally share minus the uniform share, so a strategy annotators keep
   picking rises in the records they see next.

At start it rebuilds the tally from every record's responses, read as pull reads them (each record
exactly once, checked against the server's count), so a restart loses nothing. Every request goes
through ``with_retry`` with the listener's policy (a 5xx answer is transient, as a dropped
connection is); a failure that outlasts it is answered with a 500, so the server redelivers the
event later, and applying it again changes no vote. Every change is appended to a JSONL log (time,
event, record, annotator, votes, tally, neighbour, old and new ranking).
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from curator.errors import InputError
from curator.io.paths import safe_name
from curator.integrations.argilla.client import ArgillaError, RetryPolicy, with_retry
from curator.integrations.argilla.mapping import AGENT, RANKING, VECTOR, describe, n_slots_of, slot, suggestion_score
from curator.integrations.argilla.pull import PAGE_MAX, READS
from curator.integrations.argilla.push import find_dataset
from curator.integrations.argilla.tally import Tally, adjusted_scores, counted_votes, rerank, slot_strategies, stamp_of, top_slot, top_strategy  # noqa: F401  (re-exported)

RESPONSE_EVENTS = ["response.created", "response.updated", "response.deleted"]
RECORD_EVENTS = ["record.created", "record.deleted"]
EVENTS = RESPONSE_EVENTS + RECORD_EVENTS


def _unit(values: Any) -> np.ndarray | None:
    """A vector from the API, L2-normalised (None when the record has none)."""
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float32)
    return arr / max(float(np.linalg.norm(arr)), 1e-12)


def _server_clock(resp: Any) -> datetime | None:
    """The server's time from an answer's ``Date`` header (naive UTC, whole seconds), if it sent one."""
    try:
        return parsedate_to_datetime(resp.headers["date"]).astimezone(timezone.utc).replace(tzinfo=None)
    except (KeyError, TypeError, ValueError):
        return None


def default_log_path(dataset: str) -> Path:
    """``listen-<dataset>.log.jsonl`` in the working directory; a dataset name with ``/`` or ``..`` cannot move it."""
    return Path(f"listen-{safe_name(dataset)}.log.jsonl")


class Listener:
    """State of the loop for one dataset: its records' vectors in FAISS, the tally, the log.

    ``rebuilt`` is what the start read found: records, submitted responses and the tally.
    """

    def __init__(self, client: Any, dataset: str, workspace: str = "curator", k: int = 5, weight: float = 1.0, log_path: str | Path = "listen.log.jsonl", retry: RetryPolicy | None = None) -> None:
        if k < 1:
            raise InputError(f"--neighbours {k} is invalid: use an integer >= 1")
        self.client, self.k, self.weight, self.log_path = client, k, weight, Path(log_path)
        self.retry = retry or RetryPolicy()  # every request the listener makes (--retries, --retry-delay)
        ds = find_dataset(client, dataset, workspace, policy=self.retry)
        if ds is None:
            raise InputError(f"dataset {workspace}/{dataset} does not exist: push it first with `curator argilla push`")
        self.dataset = ds
        question = next((q.id for q in ds.settings.questions if q.name == RANKING), None)
        if question is None:
            raise InputError(f"dataset {workspace}/{dataset} has no '{RANKING}' question: listen works on datasets made by `curator argilla push`")
        self.ranking_question = question
        self.n_slots = n_slots_of(describe(ds.settings))
        self.meta: dict[str, dict[str, Any]] = {}  # record id → metadata, in the server's record order
        self.vectors: dict[str, np.ndarray] = {}  # record id → normalised gradient vector
        self.unknown: set[str] = set()  # records announced (record.created, or named by an event) but not read yet
        self.deleted: set[str] = set()  # records deleted while listening: late events about them are ignored
        self.index: Any = None
        self._index_ids: list[str] = []
        self._index_stale = True
        self._rerank_owed = False  # a tally change whose re-ranking has not completed yet
        self._lock = threading.Lock()
        records, clock = self.read_records()
        self.tally = Tally(floor=clock)
        for rec in records:
            self._learn(rec)
        self._build_index()
        self.rebuilt = {"records": len(records), "submitted_responses": len(self.tally.entries()), "tally": self.tally.as_dict()}
        self._log({"event": "start", "action": "tally rebuilt from the server", **self.rebuilt})

    @property
    def ids(self) -> list[str]:
        """Every record id the listener knows, in the server's order."""
        return list(self.meta)

    # ------------------------------------------------------------------ requests (all retried)

    def _call(self, method: str, url: str, action: str, **kwargs: Any) -> Any:
        """One API request, retried like the SDK's: a 5xx answer becomes the SDK's error for it
        (``InternalServerError`` for 500), which ``with_retry`` retries; a raw ``httpx`` status error is not."""
        from argilla._exceptions import api_error_handler

        @api_error_handler
        def go() -> Any:
            resp = getattr(self.client.api.http_client, method)(url, **kwargs)
            resp.raise_for_status()
            return resp

        return with_retry(go, self.client, action, policy=self.retry)

    def read_records(self, consistent: bool = True) -> tuple[list[dict[str, Any]], datetime | None]:
        """Every record (metadata, gradient vector, responses with their ``updated_at``) as the API
        returns it, and the server's clock when the read began.

        ``consistent``: each record exactly once, in as many records as the server counted on every
        page (as pull checks), else read again, up to 3 times. The raw JSON is read, not the SDK's
        models, because those drop a response's ``updated_at``.
        """
        seen = ""
        for _ in range(READS if consistent else 1):
            out: list[dict[str, Any]] = []
            totals: set[int] = set()
            clock = None
            while True:
                resp = self._call("get", f"/api/v1/datasets/{self.dataset.id}/records", f"reading the records of dataset {self.dataset.name!r}",
                                  params={"offset": len(out), "limit": PAGE_MAX, "include": ["responses", f"vectors:{VECTOR}"]})
                clock = clock or _server_clock(resp)
                body = resp.json()
                out.extend(body["items"])
                totals.add(int(body["total"]))
                if len(body["items"]) < PAGE_MAX:
                    break
            distinct = len({str(r["id"]) for r in out})
            if not consistent or (totals == {len(out)} and distinct == len(out)):
                return out, clock
            seen = f"the server counted {sorted(totals)} records during the read, {distinct} distinct read"
        raise ArgillaError(f"the records of dataset {self.dataset.name!r} kept changing during {READS} reads ({seen}): rerun listen once the push or delete has finished")

    def ranking_suggestion(self, record_id: str) -> list[str] | None:
        """The record's current ranking suggestion (slot names, best first), read from the server."""
        resp = self._call("get", f"/api/v1/records/{record_id}/suggestions", f"reading suggestions of {record_id}")
        for item in resp.json().get("items", []):
            if str(item.get("question_id")) == str(self.ranking_question):
                return [v.get("value") if isinstance(v, dict) else v for v in item.get("value") or []]
        return None

    def put_ranking(self, record_id: str, value: list[str], scores: list[float]) -> None:
        """Replace the record's ranking suggestion (explicit ranks: the REST API wants them)."""
        body = {"question_id": str(self.ranking_question), "type": "model", "value": [{"value": name, "rank": k + 1} for k, name in enumerate(value)], "score": scores, "agent": AGENT}
        self._call("put", f"/api/v1/records/{record_id}/suggestions", f"updating suggestions of {record_id}", json=body)

    # ------------------------------------------------------------------ state

    def _learn(self, rec: dict[str, Any], clock: datetime | None = None) -> bool:
        """Take a record as the server holds it (metadata, vector, every response); True if the votes changed.

        With ``clock`` (when that read began), an annotator the record no longer has a response
        from, whose entry is older than the read, is withdrawn (a deletion whose event was missed).
        """
        rid = str(rec["id"])
        if rid not in self.meta:
            self._index_stale = True
        self.meta[rid] = dict(rec.get("metadata") or {})
        vec = _unit((rec.get("vectors") or {}).get(VECTOR))
        if vec is not None:
            if rid not in self.vectors or not np.array_equal(self.vectors[rid], vec):
                self._index_stale = True
            self.vectors[rid] = vec
        slots = slot_strategies(self.meta[rid])
        changed = False
        users = set()
        for r in rec.get("responses") or []:
            users.add(str(r["user_id"]))
            votes = counted_votes(r.get("status"), r.get("values"), slots)
            changed |= self.tally.apply(rid, str(r["user_id"]), votes, stamp_of(r.get("updated_at")), from_server=True) == "changed"
        if clock is not None:
            for user in self.tally.users(rid) - users:
                changed |= self.tally.withdraw(rid, user, (clock, 1)) == "changed"
        return changed

    def _forget(self, record_id: str) -> bool:
        """Drop a deleted record; True if that changed the votes."""
        self._index_stale |= self.meta.pop(record_id, None) is not None
        self.vectors.pop(record_id, None)
        self.unknown.discard(record_id)
        return self.tally.drop_record(record_id)

    def reload(self) -> None:
        """Read every record again, so records pushed since start are indexed and their responses counted.

        One read, not checked for consistency, so a push in progress cannot make the events fail: a
        record it misses (pages shifted by a delete meanwhile) is read at the next reload.
        """
        before = len(self.meta)
        records, clock = self.read_records(consistent=False)
        changed = False
        for rec in records:
            if str(rec["id"]) not in self.deleted:
                changed |= self._learn(rec, clock)
        self._rerank_owed |= changed
        self.unknown.clear()
        self._build_index()
        self._log({"event": "reload", "records": len(self.meta), "added": len(self.meta) - before, "tally": self.tally.as_dict()})

    def _build_index(self) -> None:
        import faiss

        self._index_ids = [rid for rid in self.meta if rid in self.vectors]
        self.index = None
        dims = {self.vectors[rid].shape[0] for rid in self._index_ids}
        if len(dims) == 1:
            self.index = faiss.IndexFlatIP(dims.pop())
            self.index.add(np.stack([self.vectors[rid] for rid in self._index_ids]))
        self._index_stale = False

    def neighbours(self, record_id: str) -> list[str]:
        """Up to k nearest records to ``record_id`` in gradient space that are still pending (no submitted response)."""
        if self.unknown:
            self.reload()
        elif self._index_stale:
            self._build_index()
        if self.index is None or record_id not in self.vectors:
            return []
        out: list[str] = []
        wanted = min(self.index.ntotal, self.k + 1 + self.tally.submitted_records())  # enough to pass every submitted one
        _, found = self.index.search(self.vectors[record_id][None, :], wanted)
        for j in found[0]:
            rid = self._index_ids[int(j)] if j >= 0 else record_id
            if rid != record_id and not self.tally.is_submitted(rid):
                out.append(rid)
                if len(out) == self.k:
                    break
        return out

    def _log(self, entry: dict[str, Any]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def log_failure(self, event_type: str, data: dict[str, Any], exc: BaseException) -> None:
        """Log an event whose handling failed (the server is answered 500 and redelivers it)."""
        record = (data.get("record") or {}).get("id") if event_type in RESPONSE_EVENTS else data.get("id")
        self._log({"event": event_type, "record": None if record is None else str(record), "error": f"{type(exc).__name__}: {exc}"})

    # ------------------------------------------------------------------ events

    def handle(self, data: dict[str, Any], event_type: str, timestamp: Any = None) -> list[dict[str, Any]]:
        """Process one event's payload (``timestamp``: the event's time, which stamps a deletion);
        return the neighbour changes made (also logged). Handling the same event again changes no vote."""
        with self._lock:
            if event_type in RECORD_EVENTS:
                self._record_event(data, event_type)
                return []
            return self._response_event(data, event_type, timestamp)

    def _record_event(self, data: dict[str, Any], event_type: str) -> None:
        rid = str(data.get("id"))
        if str((data.get("dataset") or {}).get("id")) != str(self.dataset.id):
            return
        if event_type == "record.created":
            self.deleted.discard(rid)  # a record deleted and pushed again keeps its content-hash id
            if rid not in self.meta:
                self.unknown.add(rid)  # read, with any other new record, before the next neighbour search
        elif event_type == "record.deleted" and rid not in self.deleted:
            self.deleted.add(rid)
            self._rerank_owed |= self._forget(rid)
            self._log({"event": event_type, "record": rid, "action": "record deleted: its votes withdrawn", "tally": self.tally.as_dict()})

    def _response_event(self, data: dict[str, Any], event_type: str, timestamp: Any) -> list[dict[str, Any]]:
        record = data.get("record") or {}
        rid = str(record.get("id"))
        if str((record.get("dataset") or {}).get("id")) != str(self.dataset.id):
            return []
        user = data.get("user") or {}
        uid = str(user.get("id"))
        base: dict[str, Any] = {"event": event_type, "record": rid, "annotator": user.get("username"), "user_id": uid, "status": data.get("status")}
        if rid in self.deleted:
            self._log({**base, "action": "ignored (the record was deleted)", "tally": self.tally.as_dict()})
            return []
        if rid not in self.meta:
            self.unknown.add(rid)  # pushed after start: every record is read again before the neighbour search
        if record.get("metadata"):
            self.meta[rid] = dict(record["metadata"])
        slots = slot_strategies(self.meta.get(rid) or {})
        if event_type == "response.deleted":
            outcome = self.tally.withdraw(rid, uid, stamp_of(timestamp or data.get("updated_at"), deletion=True))
        else:
            votes = counted_votes(data.get("status"), data.get("values"), slots)
            outcome = self.tally.apply(rid, uid, votes, stamp_of(data.get("updated_at")))
        if outcome == "stale":
            self._log({**base, "action": "ignored (older than the state counted)", "tally": self.tally.as_dict()})
            return []
        self._rerank_owed |= outcome == "changed"
        votes_now = self.tally.get(rid, uid)
        submitted = votes_now is not None
        base.update({"votes": list(votes_now) if submitted else None, "top_strategy": top_strategy(data.get("values"), slots) if submitted else None})
        if not submitted and not self._rerank_owed:
            self._log({**base, "action": "no change (not submitted)", "tally": self.tally.as_dict()})
            return []
        changes = self._rerank_neighbours(rid, base)
        self._rerank_owed = False
        return changes

    def _rerank_neighbours(self, rid: str, base: dict[str, Any]) -> list[dict[str, Any]]:
        changes = []
        for nb in self.neighbours(rid):
            info = slot_strategies(self.meta.get(nb, {}))
            if not info:
                continue
            old = self.ranking_suggestion(nb)
            pref = self.tally.preference(sorted({i["strategy"] for i in info.values() if i["strategy"]}))
            adjusted = adjusted_scores(info, pref, self.weight)
            new = rerank(info, pref, self.weight)
            empty = [slot(i) for i in range(1, self.n_slots + 1) if slot(i) not in info]  # placeholders rank last
            value = new + empty
            self.put_ranking(nb, value, [suggestion_score(adjusted[s]) for s in new] + [0.0] * len(empty))
            change = {**base, "tally": self.tally.as_dict(), "neighbour": nb, "old_ranking": old, "new_ranking": value}
            self._log(change)
            changes.append(change)
        if not changes:
            self._log({**base, "tally": self.tally.as_dict(), "action": "no pending neighbour"})
        return changes


def build_app(listener: Listener, public_url: str, on_event: Callable[[str, dict[str, Any]], None] | None = None) -> Any:
    """A FastAPI app with the webhook registered on the server for ``public_url``.

    The endpoint answers 500 only when handling failed (after the listener's retries), so the
    server's redelivery is the fallback; ``on_event(type, data)`` is called after each handled event.
    """
    import warnings

    import argilla as rg
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    url = public_url.rstrip("/")
    os.environ["WEBHOOK_SERVER_URL"] = url
    app = FastAPI()

    async def curator_listen(event: Any) -> Any:
        kind = str(getattr(event.type, "value", event.type))
        try:
            await run_in_threadpool(listener.handle, event.data, kind, event.timestamp)
        except Exception as exc:  # logged for the operator; the 500 makes the server redeliver later
            listener.log_failure(kind, event.data, exc)
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"[:500]}, status_code=500)
        if on_event is not None:
            on_event(kind, event.data)
        return None

    def register() -> None:
        for hook in list(listener.client.webhooks):  # this URL's webhook from an older listener (other events): it would fail our signature check
            if hook.url == f"{url}/{curator_listen.__name__}" and [str(getattr(e, "value", e)) for e in hook.events] != EVENTS:
                hook.delete()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Found existing webhook": reusing it is intended
            rg.webhook_listener(events=EVENTS, client=listener.client, server=app, raw_event=True)(curator_listen)

    with_retry(register, listener.client, "registering the webhook (this needs an owner's API key)", policy=listener.retry)
    return app


def serve_listener(listener: Listener, host: str = "127.0.0.1", port: int = 8000, public_url: str | None = None) -> None:
    """Run the listener in the foreground until interrupted; the server posts events to ``public_url``."""
    import uvicorn

    url = public_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    uvicorn.run(build_app(listener, url), host=host, port=port, log_level="warning")
