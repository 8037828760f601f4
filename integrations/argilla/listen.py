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
3. queues those neighbours for re-ranking and logs the event (one line with ``seq`` and ``queued``),
   then answers the webhook: counting never waits for the re-ranking;
4. a re-ranker (``flush``, run by a worker thread beside the web server) takes everything queued at
   once, so a record queued by several events is re-ranked once, with the tally as it is then. A
   candidate's new score is its curator score (``score_i``, the z-scored combination of alignment
   and influence) plus ``weight`` times its strategy's preference, the tally share minus the uniform
   share, so a strategy annotators keep picking rises in the records they see next. The writes go
   out ``workers`` at a time; one whose order is unchanged and whose scores moved less than
   ``SCORE_TOLERANCE`` is not sent. Each flush logs a ``flush`` line whose ``through`` is the last
   ``seq`` whose re-ranking is complete.

At start it rebuilds the tally from every record's responses, read as pull reads them (each record
exactly once, checked against the server's count), so a restart loses nothing. The same read takes
each record's ranking suggestion (the ``old_ranking`` of the log), and re-queues the neighbours the
previous run logged as queued but never flushed. Every request goes through ``with_retry`` with the
listener's policy (a 5xx answer is transient, as a dropped connection is). A failure while counting
is answered with a 500, so the server redelivers the event later, and applying it again changes no
vote; a re-ranking write that still fails stays queued and is tried again at the next flush. Every
change is appended to a JSONL log (time, event, record, annotator, votes, tally, neighbour, old and
new ranking), synced once per event and once per flush.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import numpy as np

from curator.errors import InputError
from curator.io.paths import safe_name
from curator.integrations.argilla.client import ArgillaError, RetryPolicy, with_retry
from curator.integrations.argilla.mapping import AGENT, RANKING, VECTOR, describe, n_slots_of
from curator.integrations.argilla.pull import PAGE_MAX, READS
from curator.integrations.argilla.listen_log import append_log, unflushed
from curator.integrations.argilla.push import find_dataset
from curator.integrations.argilla.rerank import SCORE_TOLERANCE, Reranking  # noqa: F401  (re-exported)
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


def _delay(timestamp: Any) -> float | None:
    """Seconds from the event (the server's timestamp of it) to now: how far behind the delivery is."""
    stamp = stamp_of(timestamp)
    if stamp is None:
        return None
    return round((datetime.now(timezone.utc).replace(tzinfo=None) - stamp[0]).total_seconds(), 3)


def default_log_path(dataset: str) -> Path:
    """``listen-<dataset>.log.jsonl`` in the working directory; a dataset name with ``/`` or ``..`` cannot move it."""
    return Path(f"listen-{safe_name(dataset)}.log.jsonl")


class Listener(Reranking):
    """State of the loop for one dataset: its records' vectors in FAISS, the tally, the log.

    ``rebuilt`` is what the start read found: records, submitted responses and the tally.
    """

    def __init__(self, client: Any, dataset: str, workspace: str = "curator", k: int = 5, weight: float = 1.0, log_path: str | Path = "listen.log.jsonl", retry: RetryPolicy | None = None, workers: int = 4) -> None:
        if k < 1:
            raise InputError(f"--neighbours {k} is invalid: use an integer >= 1")
        if not isinstance(workers, int) or workers < 1:
            raise InputError(f"--workers {workers} is invalid: use an integer >= 1 (re-ranking writes in flight)")
        self.client, self.k, self.weight, self.log_path, self.workers = client, k, weight, Path(log_path), workers
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
        self._rerank_owed = False  # a tally change whose neighbours have not been queued yet
        self.suggested: dict[str, tuple[list[str], list[float] | None]] = {}  # record → its ranking suggestion (slots, scores) as last read or written
        self.queue: dict[str, tuple[int, dict[str, Any]]] = {}  # neighbour → (seq, the event that last queued it)
        self.seq = 0  # events counted this run; the log's ``seq``
        self._lock = threading.Lock()  # the state: tally, records, index, queue
        self._flushing = threading.Lock()  # one flush at a time
        self.wake = threading.Event()  # set when something is queued
        owed = unflushed(self.log_path)
        records, clock = self.read_records()
        self.tally = Tally(floor=clock)
        for rec in records:
            self._learn(rec)
        self._build_index()
        self.rebuilt = {"records": len(records), "submitted_responses": len(self.tally.entries()), "tally": self.tally.as_dict()}
        owed = [rid for rid in owed if rid in self.meta]
        for rid in owed:
            self.queue[rid] = (0, {"event": "requeued", "record": None, "action": "queued by the previous run, never written"})
        if owed:
            self.wake.set()
        self._log({"event": "start", "action": "tally rebuilt from the server", **self.rebuilt, "seq": 0, "queued": owed})

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
        """Every record (metadata, gradient vector, suggestions, responses with their ``updated_at``) as the API
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
                                  params={"offset": len(out), "limit": PAGE_MAX, "include": ["responses", "suggestions", f"vectors:{VECTOR}"]})
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

    def _ranking_of(self, suggestions: list[dict[str, Any]] | None) -> tuple[list[str], list[float] | None] | None:
        """The ranking suggestion (slots best first, their scores) among a record's suggestions."""
        for item in suggestions or []:
            if str(item.get("question_id")) == str(self.ranking_question):
                value = [v.get("value") if isinstance(v, dict) else v for v in item.get("value") or []]
                score = item.get("score")
                return value, (list(score) if isinstance(score, list) else None)
        return None

    def ranking_suggestion(self, record_id: str) -> list[str] | None:
        """The record's current ranking suggestion (slot names, best first), read from the server."""
        resp = self._call("get", f"/api/v1/records/{record_id}/suggestions", f"reading suggestions of {record_id}")
        found = self._ranking_of(resp.json().get("items", []))
        return None if found is None else found[0]

    def put_ranking(self, record_id: str, value: list[str], scores: list[float]) -> None:
        """Replace the record's ranking suggestion (explicit ranks: the REST API wants them)."""
        body = {"question_id": str(self.ranking_question), "type": "model", "value": [{"value": name, "rank": k + 1} for k, name in enumerate(value)], "score": scores, "agent": AGENT}
        self._call("put", f"/api/v1/records/{record_id}/suggestions", f"updating suggestions of {record_id}", json=body)
        self.suggested[record_id] = (list(value), list(scores))

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
        if "suggestions" in rec:
            found = self._ranking_of(rec.get("suggestions"))
            if found is None:
                self.suggested.pop(rid, None)
            else:
                self.suggested[rid] = found
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
        self.suggested.pop(record_id, None)
        self.queue.pop(record_id, None)
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

    def _log(self, *entries: dict[str, Any]) -> None:
        append_log(self.log_path, *entries)

    def log_failure(self, event_type: str, data: dict[str, Any], exc: BaseException) -> None:
        """Log an event whose handling failed (the server is answered 500 and redelivers it)."""
        record = (data.get("record") or {}).get("id") if event_type in RESPONSE_EVENTS else data.get("id")
        self._log({"event": event_type, "record": None if record is None else str(record), "error": f"{type(exc).__name__}: {exc}"})

    # ------------------------------------------------------------------ events

    def handle(self, data: dict[str, Any], event_type: str, timestamp: Any = None) -> list[dict[str, Any]]:
        """Count one event (``accept``) and re-rank what it queued (``flush``); the neighbour re-rankings
        made (also logged). Handling the same event again changes no vote."""
        self.accept(data, event_type, timestamp)
        return self.flush()

    def accept(self, data: dict[str, Any], event_type: str, timestamp: Any = None) -> list[str]:
        """Count one event's payload (``timestamp``: the event's time, which stamps a deletion), log it,
        and queue its pending neighbours for re-ranking; the neighbours queued. No suggestion is written."""
        with self._lock:
            if event_type in RECORD_EVENTS:
                self._record_event(data, event_type)
                return []
            queued = self._response_event(data, event_type, timestamp)
        if queued:
            self.wake.set()
        return queued

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
        found = self.neighbours(rid)
        self._rerank_owed = False
        self.seq += 1
        for nb in found:
            self.queue[nb] = (self.seq, base)
        action = "counted; neighbours queued" if found else "counted; no pending neighbour"
        self._log({**base, "action": action, "tally": self.tally.as_dict(), "seq": self.seq, "queued": found, "delay_s": _delay(timestamp)})
        return found
