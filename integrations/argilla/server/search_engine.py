"""curator's search engine for argilla-server: every index lives in one SQLite file.

Imported only inside the argilla-server virtualenv (by ``launcher.py``), before the app or the rq worker
starts, so that ``ARGILLA_SEARCH_ENGINE=curator-sqlite`` resolves. The server makes a new engine per
request and the API process and the worker both write, so all state is in the SQLite file named by
``CURATOR_SEARCH_DB`` (WAL mode; read-modify-write updates run in ``BEGIN IMMEDIATE`` transactions).

Each record is stored as a JSON document shaped like the Elasticsearch engine's document (built with
its mapping helpers), and vectors as float64 blobs in their own table. Searches load a dataset's
documents and evaluate filters and sorts (``search_query.py``) and ``simple_query_string`` text queries
(``search_text.py``) in Python; similarity search is brute-force cosine in numpy. This is meant for a
dev/demo server of up to tens of thousands of records, not for production scale.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import os
import sqlite3
from typing import Any, Dict, Iterable, List, Optional, Union
from uuid import UUID

import numpy as np
from argilla_server.enums import MetadataPropertyType, SimilarityOrder
from argilla_server.models import Dataset, MetadataProperty, Record, Response, Suggestion, User, VectorSettings
from argilla_server.search_engine.base import (
    Filter,
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataMetrics,
    Order,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    TermsMetrics,
    TextQuery,
)
from argilla_server.search_engine.commons import BaseElasticAndOpenSearchEngine as _ES
from argilla_server.search_engine.commons import es_field_for_metadata_property, es_path_for_vector_settings

try:  # a sibling module: a package import in tests, a top-level one under launcher.py
    from . import search_query as sq
except ImportError:  # pragma: no cover - depends on how the module was loaded
    import search_query as sq  # type: ignore[no-redef]

ENGINE_NAME = "curator-sqlite"
DB_ENV = "CURATOR_SEARCH_DB"
ENGINE_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    record_id TEXT PRIMARY KEY,
    dataset_id TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_dataset ON docs (dataset_id);
CREATE TABLE IF NOT EXISTS vectors (
    record_id TEXT NOT NULL,
    settings_id TEXT NOT NULL,
    dataset_id TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (record_id, settings_id)
);
CREATE INDEX IF NOT EXISTS vectors_dataset ON vectors (dataset_id, settings_id);
"""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    return value


def _response_entry(response: Response) -> Dict[str, Any]:
    """The Elasticsearch engine's response sub-document, tolerant of a response without values."""
    values = response.values or {}
    return _jsonable(
        {
            "id": response.id,
            "status": response.status,
            "user_id": response.user_id,
            **{question: (value or {}).get("value") for question, value in values.items()},
        }
    )


def _document(dataset: Dataset, record: Record) -> Dict[str, Any]:
    """The record as an Elasticsearch-engine document, except vectors (stored apart) and metadata (all kept)."""
    fields = _ES._map_record_fields_to_es(dict(record.fields or {}), dataset.fields)
    for field in dataset.fields:
        if field.is_image:  # not searchable; Elasticsearch excludes them from the document too
            fields.pop(field.name, None)
    doc = {
        "id": record.id,
        "external_id": record.external_id,
        "fields": fields,
        "status": record.status,
        "inserted_at": record.inserted_at,
        "updated_at": record.updated_at,
        "metadata": dict(record.metadata_ or {}),
        "responses": [_response_entry(r) for r in record.responses or []],
        "suggestions": _ES._map_record_suggestions_to_es(record.suggestions or []),
    }
    return _jsonable(doc)


@SearchEngine.register(engine_name=ENGINE_NAME)
@dataclasses.dataclass
class SQLiteSearchEngine(SearchEngine):
    """The ``SearchEngine`` interface over one SQLite file shared by every server process."""

    path: str
    _conn: Optional[sqlite3.Connection] = dataclasses.field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------------------ lifecycle
    @classmethod
    async def new_instance(cls) -> "SQLiteSearchEngine":
        path = os.environ.get(DB_ENV)
        if not path:
            raise RuntimeError(f"{DB_ENV} is not set: it must name the search engine's SQLite file")
        return cls(path=path)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    async def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def ping(self) -> bool:
        try:
            return self.conn.execute("SELECT 1").fetchone() == (1,)
        except sqlite3.Error:
            return False

    async def info(self) -> dict:
        return {"name": ENGINE_NAME, "version": {"number": ENGINE_VERSION, "sqlite": sqlite3.sqlite_version}}

    # ---------------------------------------------------------------------------- storage helpers
    def _write(self, statements: List[tuple]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _update_doc(self, record_id: Any, change) -> None:
        """Read-modify-write one document atomically; a record never indexed is left alone."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT doc FROM docs WHERE record_id = ?", (str(record_id),)).fetchone()
            if row is not None:
                doc = json.loads(row[0])
                change(doc)
                conn.execute("UPDATE docs SET doc = ? WHERE record_id = ?", (json.dumps(doc), str(record_id)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _docs(self, dataset_id: Any) -> List[Dict[str, Any]]:
        rows = self.conn.execute("SELECT doc FROM docs WHERE dataset_id = ? ORDER BY rowid", (str(dataset_id),))
        return [json.loads(doc) for (doc,) in rows]

    # ---------------------------------------------------------------------------- index lifecycle
    async def create_index(self, dataset: Dataset):
        self.conn.execute("SELECT 1")  # documents need no mapping; connecting creates the schema

    async def delete_index(self, dataset: Dataset):
        did = str(dataset.id)
        self._write(
            [("DELETE FROM docs WHERE dataset_id = ?", (did,)), ("DELETE FROM vectors WHERE dataset_id = ?", (did,))]
        )

    async def configure_metadata_property(self, dataset: Dataset, metadata_property: MetadataProperty):
        pass  # all metadata is stored; filters name the property they need

    async def configure_index_vectors(self, vector_settings: VectorSettings):
        pass

    # ----------------------------------------------------------------------------------- records
    async def index_records(self, dataset: Dataset, records: Iterable[Record]):
        did, statements = str(dataset.id), []
        for record in records:
            rid = str(record.id)
            statements.append(
                (
                    "INSERT INTO docs (record_id, dataset_id, doc) VALUES (?, ?, ?) "
                    "ON CONFLICT (record_id) DO UPDATE SET doc = excluded.doc",
                    (rid, did, json.dumps(_document(dataset, record))),
                )
            )
            # like Elasticsearch's "index" operation, the new document replaces the old one, vectors included
            statements.append(("DELETE FROM vectors WHERE record_id = ?", (rid,)))
            for vector in record.vectors or []:
                blob = np.asarray(vector.value, dtype=np.float64).tobytes()
                statements.append(
                    (
                        "INSERT INTO vectors (record_id, settings_id, dataset_id, value) VALUES (?, ?, ?, ?)",
                        (rid, str(vector.vector_settings_id), did, blob),
                    )
                )
        self._write(statements)

    async def partial_record_update(self, record: Record, **update):
        self._update_doc(record.id, lambda doc: doc.update(_jsonable(update)))

    async def delete_records(self, dataset: Dataset, records: Iterable[Record]):
        statements = []
        for record in records:
            statements.append(("DELETE FROM docs WHERE record_id = ?", (str(record.id),)))
            statements.append(("DELETE FROM vectors WHERE record_id = ?", (str(record.id),)))
        self._write(statements)

    async def update_record_response(self, response: Response):
        entry = _response_entry(response)

        def change(doc: Dict[str, Any]) -> None:
            doc["responses"] = [r for r in doc.get("responses") or [] if r.get("id") != entry["id"]] + [entry]

        self._update_doc(response.record_id, change)

    async def delete_record_response(self, response: Response):
        rid = str(response.id)

        def change(doc: Dict[str, Any]) -> None:
            doc["responses"] = [r for r in doc.get("responses") or [] if r.get("id") != rid]

        self._update_doc(response.record_id, change)

    async def update_record_suggestion(self, suggestion: Suggestion):
        entry = _jsonable(_ES._map_record_suggestions_to_es([suggestion]))
        self._update_doc(suggestion.record_id, lambda doc: doc.setdefault("suggestions", {}).update(entry))

    async def delete_record_suggestion(self, suggestion: Suggestion):
        name = suggestion.question.name
        self._update_doc(suggestion.record_id, lambda doc: (doc.get("suggestions") or {}).pop(name, None))

    # ---------------------------------------------------------------------------------- progress
    async def get_dataset_progress(self, dataset: Dataset) -> dict:
        if dataset.is_draft:
            return {}
        rows = self.conn.execute(
            "SELECT json_extract(doc, '$.status'), COUNT(*) FROM docs WHERE dataset_id = ? GROUP BY 1",
            (str(dataset.id),),
        ).fetchall()
        counts = {status: n for status, n in rows if status is not None}
        return {"total": sum(counts.values()), **counts}

    async def get_dataset_user_progress(self, dataset: Dataset, user: User) -> dict:
        if dataset.is_draft:
            return {}
        counts: Dict[str, int] = {}
        uid = str(user.id)
        for doc in self._docs(dataset.id):
            for response in doc.get("responses") or []:
                if response.get("user_id") == uid:
                    counts[response["status"]] = counts.get(response["status"], 0) + 1
        return {"total": sum(counts.values()), **counts}

    # ------------------------------------------------------------------------------------ search
    def _candidates(self, dataset: Dataset, query: Optional[Union[TextQuery, str]], filter: Optional[Filter]) -> tuple:
        """The documents passing the filter and the text query, and their scores (1.0 each without a query)."""
        docs = [doc for doc in self._docs(dataset.id) if sq.matches(doc, filter)]
        if query is None:  # Elasticsearch's match_all
            return docs, {doc["id"]: 1.0 for doc in docs}
        scores = sq.TextMatcher(query).score_all(docs)
        return [doc for doc in docs if doc["id"] in scores], scores

    async def search(
        self,
        dataset: Dataset,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        sort: Optional[List[Order]] = None,
        offset: int = 0,
        limit: int = 100,
        user_id: Optional[str] = None,
    ) -> SearchResponses:
        docs, scores = self._candidates(dataset, query, filter)
        if user_id is not None:  # Elasticsearch's function_score: the score times a per-user seeded random_score
            rand = sq.user_random(user_id)
            scores = {rid: score * rand(rid) for rid, score in scores.items()}
        if not sort or user_id is not None:  # by score; under a sort, only an annotator's ties (a stable shuffle)
            docs.sort(key=lambda doc: -scores[doc["id"]])
        if sort:
            docs = sq.sort_docs(docs, sort)
        page = docs[offset : offset + limit]
        # sorted by fields, Elasticsearch computes no score (no track_scores): the hits' _score is null
        items = [
            SearchResponseItem(record_id=UUID(doc["id"]), score=None if sort else scores[doc["id"]]) for doc in page
        ]
        return SearchResponses(items=items, total=len(docs))

    async def similarity_search(
        self,
        dataset: Dataset,
        vector_settings: VectorSettings,
        value: Optional[List[float]] = None,
        record: Optional[Record] = None,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        max_results: int = 100,
        order: SimilarityOrder = SimilarityOrder.most_similar,
        threshold: Optional[float] = None,
    ) -> SearchResponses:
        if bool(value) == bool(record):
            raise ValueError("Must provide either vector value or record to compute the similarity search")
        excluded = str(record.id) if record is not None else None
        vector_value = value or record.vector_value_by_vector_settings(vector_settings)
        if not vector_value:
            raise ValueError("Cannot find a vector value to apply with provided info")

        docs, _ = self._candidates(dataset, query, filter)
        allowed = {doc["id"] for doc in docs} - {excluded}
        rows = self.conn.execute(
            "SELECT record_id, value FROM vectors WHERE dataset_id = ? AND settings_id = ?",
            (str(dataset.id), es_path_for_vector_settings(vector_settings)),
        ).fetchall()
        rows = [(rid, blob) for rid, blob in rows if rid in allowed]
        if not rows:
            return SearchResponses(items=[], total=0)

        matrix = np.stack([np.frombuffer(blob, dtype=np.float64) for _, blob in rows])
        q = np.asarray(vector_value, dtype=np.float64)
        norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(q)
        cosine = np.divide(matrix @ q, norms, out=np.zeros(len(rows)), where=norms > 0)
        if order == SimilarityOrder.least_similar:
            cosine = -cosine  # Elasticsearch searches with the inverted vector
        scores = (1.0 + cosine) / 2.0  # Elasticsearch's score for cosine similarity
        ranked = sorted(range(len(rows)), key=lambda i: (-scores[i], rows[i][0]))[:max_results]
        items = [SearchResponseItem(record_id=UUID(rows[i][0]), score=float(scores[i])) for i in ranked]
        if threshold is not None:
            items = [item for item in items if item.score >= threshold]
        return SearchResponses(items=items, total=len(items))

    # ----------------------------------------------------------------------------------- metrics
    async def compute_metrics_for(self, metadata_property: MetadataProperty) -> MetadataMetrics:
        field = es_field_for_metadata_property(metadata_property)
        values = [v for doc in self._docs(metadata_property.dataset_id) for v in sq.lookup(doc, field)]
        if metadata_property.type == MetadataPropertyType.terms:
            counts: Dict[str, int] = {}
            for v in values:
                counts[sq.term_of(v)] = counts.get(sq.term_of(v), 0) + 1
            ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            return TermsMetrics(total=len(values), values=[TermsMetrics.TermCount(term=t, count=c) for t, c in ordered])
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if metadata_property.type == MetadataPropertyType.integer:
            return IntegerMetadataMetrics(min=min(numbers, default=None), max=max(numbers, default=None))
        return FloatMetadataMetrics(min=min(numbers, default=None), max=max(numbers, default=None))
