"""`curator argilla listen`: the annotation loop.

A webhook listener (the SDK's webhook support: FastAPI + uvicorn) for ``response.created`` and
``response.updated``. When an annotator submits a ranking it:

1. updates the strategy tally: the strategy of the candidate ranked first, and the
   ``best_strategy`` label, each count one vote;
2. finds the k nearest records in gradient space (a FAISS inner-product search over the records'
   ``gradient`` vectors, loaded once at start) that are still pending (no submitted response);
3. re-ranks each such neighbour's ranking suggestion: a candidate's new score is its curator score
   (``score_i``, the z-scored combination of alignment and influence) plus ``weight`` times its
   strategy's preference, the tally share minus the uniform share, so a strategy annotators keep
   picking rises in the records they see next.

Every change is appended to a JSONL log (time, event, record, annotator, tally, neighbour, old and
new ranking). The pure decision logic (``Tally``, ``rerank``) is separate from the I/O.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curator.errors import InputError
from curator.io.paths import safe_name
from curator.integrations.argilla.client import RetryPolicy, with_retry
from curator.integrations.argilla.mapping import AGENT, BEST, RANKING, VECTOR, describe, n_slots_of, slot, slot_candidates, suggestion_score
from curator.integrations.argilla.pull import record_metadata as _metadata
from curator.integrations.argilla.pull import fetch_record_models
from curator.integrations.argilla.push import find_dataset

EVENTS = ["response.created", "response.updated"]


@dataclass
class Tally:
    """Votes per strategy from submitted rankings (top choice) and best-strategy labels."""

    votes: Counter = field(default_factory=Counter)

    def add(self, top_strategy: str | None, best_strategy: str | None) -> None:
        for s in (top_strategy, best_strategy):
            if s:
                self.votes[s] += 1

    def preference(self, strategies: list[str]) -> dict[str, float]:
        """Each strategy's vote share minus the uniform share (0 for all when there are no votes)."""
        total = sum(self.votes[s] for s in strategies)
        if not strategies or total == 0:
            return {s: 0.0 for s in strategies}
        return {s: self.votes[s] / total - 1.0 / len(strategies) for s in strategies}


def adjusted_scores(slots: dict[str, dict[str, Any]], preference: dict[str, float], weight: float) -> dict[str, float]:
    """Each slot's curator score (missing → 0) + weight × its strategy's preference.

    ``slots`` maps slot name → {"strategy": str, "score": float | None}.
    """
    out = {}
    for name, s in slots.items():
        base = s.get("score")
        base = 0.0 if base is None or not math.isfinite(base) else float(base)
        out[name] = base + weight * preference.get(s.get("strategy") or "", 0.0)
    return out


def rerank(slots: dict[str, dict[str, Any]], preference: dict[str, float], weight: float) -> list[str]:
    """Slots best first by ``adjusted_scores`` (ties by slot name)."""
    adjusted = adjusted_scores(slots, preference, weight)
    return sorted(adjusted, key=lambda name: (-adjusted[name], name))


def _slot_info(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """slot → strategy and curator score, for the slots that hold a candidate."""
    n = max((int(k.rsplit("_", 1)[1]) for k in meta if k.startswith("candidate_id_")), default=0)
    return {s: {"strategy": meta.get(f"strategy_{s.rsplit('_', 1)[1]}"), "score": meta.get(f"score_{s.rsplit('_', 1)[1]}")} for s in slot_candidates(meta, n)}


def _vector(model: Any, name: str) -> np.ndarray | None:
    """A record model's named vector (the API returns a list of {name, vector_values} or a dict)."""
    vectors = model.vectors or []
    if isinstance(vectors, dict):
        v = vectors.get(name)
    else:
        v = next((x.vector_values for x in vectors if x.name == name), None)
    return None if v is None else np.asarray(v, dtype=np.float32)


def _value(values: dict[str, Any] | None, question: str) -> Any:
    v = (values or {}).get(question)
    return v.get("value") if isinstance(v, dict) else v


def top_slot(ranking: Any) -> str | None:
    """The slot ranked first in a ranking response value ([{value, rank}, ...] or a plain list)."""
    if not ranking:
        return None
    items = [(r.get("rank") or k + 1, r.get("value")) if isinstance(r, dict) else (k + 1, r) for k, r in enumerate(ranking)]
    return min(items, key=lambda x: (x[0], str(x[1])))[1]


def default_log_path(dataset: str) -> Path:
    """``listen-<dataset>.log.jsonl`` in the working directory; a dataset name with ``/`` or ``..`` cannot move it."""
    return Path(f"listen-{safe_name(dataset)}.log.jsonl")


class Listener:
    """State of the loop for one dataset: its records' vectors in FAISS, the tally, the log."""

    def __init__(self, client: Any, dataset: str, workspace: str = "curator", k: int = 5, weight: float = 1.0, log_path: str | Path = "listen.log.jsonl", retry: RetryPolicy | None = None) -> None:
        import faiss

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
        records = self._fetch(with_vectors=True)
        self.ids = [str(r.id) for r in records]
        self.meta = {str(r.id): _metadata(r) for r in records}
        vecs = [_vector(r, VECTOR) for r in records]
        have = [v for v in vecs if v is not None]
        self.index = None
        if have:
            dim = have[0].shape[0]
            mat = np.stack([v if v is not None else np.zeros(dim, np.float32) for v in vecs])
            mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
            self.index = faiss.IndexFlatIP(dim)
            self.index.add(mat)
            self._vectors = mat
        self.tally = Tally()
        self.submitted: set[str] = set()  # records with a submitted response, kept current by the events
        for r in fetch_record_models(client, ds):
            for resp in r.responses or []:
                if str(getattr(resp.status, "value", resp.status)) == "submitted":
                    self.submitted.add(str(r.id))
                    self._count(str(r.id), resp.values)

    def _fetch(self, with_vectors: bool = False) -> list[Any]:
        out: list[Any] = []
        while True:
            batch = with_retry(lambda: self.client.api.records.list(dataset_id=self.dataset.id, offset=len(out), limit=100, with_vectors=[VECTOR]), self.client, "reading record vectors", policy=self.retry)
            out.extend(batch)
            if len(batch) < 100:
                return out

    def _count(self, record_id: str, values: dict[str, Any] | None) -> str | None:
        info = _slot_info(self.meta.get(record_id, {}))
        top = top_slot(_value(values, RANKING))
        top_strategy = info.get(top, {}).get("strategy") if top else None
        self.tally.add(top_strategy, _value(values, BEST))
        return top_strategy

    def _log(self, entry: dict[str, Any]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def neighbours(self, record_id: str) -> list[str]:
        """Up to k nearest records to ``record_id`` in gradient space that are still pending."""
        if self.index is None or record_id not in self.ids:
            return []
        pos = self.ids.index(record_id)
        _, found = self.index.search(self._vectors[pos : pos + 1], min(len(self.ids), 4 * self.k + 1))
        out = []
        for j in found[0]:
            rid = self.ids[int(j)]
            if j < 0 or rid == record_id or rid in self.submitted:
                continue
            out.append(rid)
            if len(out) == self.k:
                break
        return out

    def ranking_suggestion(self, record_id: str) -> list[str] | None:
        """The record's current ranking suggestion (slot names, best first), read from the server."""
        resp = with_retry(lambda: self.client.api.http_client.get(f"/api/v1/records/{record_id}/suggestions"), self.client, f"reading suggestions of {record_id}", policy=self.retry)
        resp.raise_for_status()
        for item in resp.json().get("items", []):
            if str(item.get("question_id")) == str(self.ranking_question):
                return [v.get("value") if isinstance(v, dict) else v for v in item.get("value") or []]
        return None

    def handle(self, data: dict[str, Any], event_type: str) -> list[dict[str, Any]]:
        """Process one response event's payload; return the changes made (also logged)."""
        record = data.get("record") or {}
        rid = str(record.get("id"))
        if str((record.get("dataset") or {}).get("id")) != str(self.dataset.id):
            return []
        if data.get("status") != "submitted":
            self._log({"event": event_type, "record": rid, "status": data.get("status"), "action": "ignored (not submitted)"})
            return []
        if record.get("metadata"):
            self.meta[rid] = dict(record["metadata"])
        user = (data.get("user") or {}).get("username")
        self.submitted.add(rid)
        top_strategy = self._count(rid, data.get("values"))
        changes = []
        for nb in self.neighbours(rid):
            info = _slot_info(self.meta.get(nb, {}))
            if not info:
                continue
            old = self.ranking_suggestion(nb)
            pref = self.tally.preference(sorted({i["strategy"] for i in info.values() if i["strategy"]}))
            adjusted = adjusted_scores(info, pref, self.weight)
            new = rerank(info, pref, self.weight)
            empty = [slot(i) for i in range(1, self.n_slots + 1) if slot(i) not in info]  # placeholders rank last
            value = new + empty
            scores = [suggestion_score(adjusted[s]) for s in new] + [0.0] * len(empty)
            ranked = [{"value": name, "rank": k + 1} for k, name in enumerate(value)]  # the REST API wants explicit ranks
            body = {"question_id": str(self.ranking_question), "type": "model", "value": ranked, "score": scores, "agent": AGENT}
            with_retry(lambda: self.client.api.http_client.put(f"/api/v1/records/{nb}/suggestions", json=body).raise_for_status(), self.client, f"updating suggestions of {nb}", policy=self.retry)
            change = {"event": event_type, "record": rid, "annotator": user, "top_strategy": top_strategy, "tally": dict(self.tally.votes), "neighbour": nb, "old_ranking": old, "new_ranking": value}
            self._log(change)
            changes.append(change)
        if not changes:
            self._log({"event": event_type, "record": rid, "annotator": user, "top_strategy": top_strategy, "tally": dict(self.tally.votes), "action": "no pending neighbour"})
        return changes


def build_app(listener: Listener, public_url: str) -> Any:
    """A FastAPI app with the webhook registered on the server for ``public_url``."""
    import warnings

    import argilla as rg
    from fastapi import FastAPI

    os.environ["WEBHOOK_SERVER_URL"] = public_url.rstrip("/")
    app = FastAPI()

    async def curator_listen(event: Any) -> None:
        kind = str(getattr(event.type, "value", event.type))
        try:
            listener.handle(event.data, kind)
        except Exception as exc:  # logged for the operator; the server retries the delivery
            listener._log({"event": kind, "error": f"{type(exc).__name__}: {exc}"})
            raise

    def register() -> None:
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
