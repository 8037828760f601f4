"""`curator argilla pull`: annotators' submitted answers → one aggregated row per record.

Every record comes back: submitted ones with every annotator's ranking, ratings and keep/drop
labels, the aggregated ranking (Borda or mean rank) with Kendall's W, each candidate's mean and
median rating and majority label; discarded and pending ones with their status. The file's
schema is documented in ``curator.curation.annotations``.

Records are read as the SDK's record *models* (``client.api.records.list``, paged), not as
``dataset.records(...)`` objects, for two reasons found on SDK 2.8.0: the public ``Response``
flattens a ranking to a plain list and drops the ranks (ties are lost), and building a ``Record``
crashes (``'NoneType' object has no attribute 'items'``) on a discarded response sent without
values, which the server accepts.

Pulling while annotators still submit gives a consistent set: each response is one row on the
server, written whole, so a record comes back either with an annotator's complete response or
without it (then it counts as pending: no submitted response yet). Pages are read in the server's
record order (by insertion time, which a response does not change); a read that holds an id twice,
or not exactly the number of records the server counted before and after it (records added or
deleted meanwhile: a push running), is read again, so no record is lost or doubled.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curator import __version__
from curator.curation.annotations import METHODS, PULLED_FORMAT, aggregate, summarize, tally_strategies
from curator.config import ProgressFn, no_progress
from curator.errors import InputError
from curator.curation import review
from curator.curation.export import write_rows
from curator.io.atomic import write_text_atomic
from curator.integrations.argilla.client import ArgillaError, RetryPolicy, connect, not_a_member, with_retry
from curator.integrations.argilla.mapping import BEST, COMMENT, KEEP, PROMPT, RANKING, RATING, SLOT, SLOT_FLOATS, describe, n_slots_of, questions_of, slot_candidates
from curator.integrations.argilla.push import find_dataset

PULL_SUFFIXES = (".jsonl", ".parquet")
PAGE_MAX = 1000  # argilla-server 2.8.0 refuses larger pages (LIST_DATASET_RECORDS_LIMIT_LE)
READS = 3  # full reads tried before a pull gives up on a dataset whose records keep changing
PULL_HINT = "rerunning is safe: rerun the same pull once the server is back (nothing was written)"


@dataclass(frozen=True)
class PullResult:
    out: Path
    records: int
    submitted: int
    discarded: int
    pending: int
    responses: int
    skipped: int = 0
    strategy_votes: dict[str, int] = field(default_factory=dict)
    reads: int = 1  # full reads of the dataset it took to get a consistent set
    agreement: dict[str, Any] = field(default_factory=dict)  # curator.curation.review.summary
    report: Path | None = None  # <out stem>.report.md


def plain(value: Any) -> Any:
    """SDK/pydantic values (chat messages) as plain JSON data."""
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _status(value: Any) -> str:
    return str(getattr(value, "value", value))


def _raw_responses(model: Any) -> list[dict[str, Any]]:
    """Each user's response as {user_id, status, values} (values: question name → value)."""
    out = []
    for m in model.responses or []:
        values = {q: (v.get("value") if isinstance(v, dict) else getattr(v, "value", v)) for q, v in (m.values or {}).items()}
        out.append({"user_id": str(m.user_id), "status": _status(m.status), "values": values})
    return out


def fetch_record_models(client: Any, dataset: Any, page: int = 100, policy: RetryPolicy | None = None, hint: str = PULL_HINT, with_vectors: bool = False) -> list[Any]:
    """Every record model of ``dataset`` with responses and suggestions (and vectors), page by page (no consistency check)."""
    out: list[Any] = []
    while True:
        batch = with_retry(
            lambda: client.api.records.list(dataset_id=dataset.id, offset=len(out), limit=page, with_suggestions=True, with_responses=True, with_vectors=with_vectors or None),
            client, f"reading the records of dataset {dataset.name!r}", policy=policy, hint=hint,
        )
        out.extend(batch)
        if len(batch) < page:
            return out


def record_count(client: Any, dataset: Any, policy: RetryPolicy | None = None) -> int:
    """How many records the server holds for ``dataset`` now (the list endpoint's ``total``)."""

    def get() -> int:
        resp = client.api.http_client.get(f"/api/v1/datasets/{dataset.id}/records", params={"offset": 0, "limit": 1})
        resp.raise_for_status()
        return int(resp.json()["total"])

    return with_retry(get, client, f"counting the records of dataset {dataset.name!r}", policy=policy, hint=PULL_HINT)


def read_consistent(client: Any, dataset: Any, page: int = PAGE_MAX, policy: RetryPolicy | None = None, reads: int = READS, with_vectors: bool = False) -> tuple[list[Any], int]:
    """(record models, reads it took): every record exactly once, checked against the server's count.

    A read is accepted when it holds no id twice and as many distinct records as the server
    counted both before and after it; otherwise (records added or deleted meanwhile, or pages
    that shifted) it is read again, up to ``reads`` times.
    """
    seen = ""
    for attempt in range(1, reads + 1):
        before = record_count(client, dataset, policy)
        models = fetch_record_models(client, dataset, page, policy, with_vectors=with_vectors)
        after = record_count(client, dataset, policy)
        unique = {str(m.id): m for m in models}
        if len(unique) == len(models) == before == after:
            return models, attempt
        seen = f"{before} records counted before the read, {after} after, {len(unique)} distinct read"
    raise ArgillaError(
        f"the records of dataset {dataset.name!r} at {getattr(client, 'api_url', 'the server')} kept changing during {reads} reads "
        f"({seen}): records are being added or deleted; rerun the pull once the push or delete has finished"
    )


def _usernames(client: Any) -> dict[str, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {str(u.id): str(u.username) for u in client.users}
    except Exception:  # an annotator key may not list users: ids are enough
        return {}


def record_metadata(model: Any) -> dict[str, Any]:
    meta = model.metadata or {}
    if isinstance(meta, dict):
        return dict(meta)
    return {m.name: m.value for m in meta}


def _per_slot(values: dict[str, Any], prefix: str, slots: dict[str, str]) -> dict[str, Any]:
    """slot → an annotator's answer to the per-slot questions ``<prefix><i>`` (rating_i, keep_i)."""
    return {s: values[f"{prefix}{s[len(SLOT):]}"] for s in slots if values.get(f"{prefix}{s[len(SLOT):]}") is not None}


def _record_input(model: Any, n_slots: int, questions: dict[str, str]) -> dict[str, Any] | None:
    """The aggregate() input for one record model, plus what the pulled row needs; None if not curator's."""
    meta = record_metadata(model)
    slots = slot_candidates(meta, n_slots)
    if not slots:
        return None
    fields = plain(dict(model.fields or {}))
    responses = _raw_responses(model)
    submitted = [r for r in responses if r["status"] == "submitted"]
    status = "submitted" if submitted else "discarded" if any(r["status"] == "discarded" for r in responses) else "pending"
    suggested: list[str] = []
    for s in model.suggestions or []:
        if questions.get(str(s.question_id), s.question_name) == RANKING:
            values = [v.get("value") if isinstance(v, dict) else v for v in (s.value or [])]
            suggested = [slots[v] for v in values if v in slots]
    index = {s: s[len(SLOT):] for s in slots}
    candidates = [{"slot": s, "id": cid, "strategy": meta.get(f"strategy_{index[s]}"), "text": fields.get(s)} for s, cid in slots.items()]
    scores = [{"candidate_id": cid, **{k: meta.get(f"{k}_{index[s]}") for k in SLOT_FLOATS}} for s, cid in slots.items()]
    return {
        "id": str(model.external_id if model.external_id is not None else model.id),
        "slots": slots,
        "status": status,
        "rankings": {r["user_id"]: r["values"][RANKING] for r in submitted if r["values"].get(RANKING) is not None},
        "best_strategy": {r["user_id"]: r["values"].get(BEST) for r in submitted},
        "comments": {r["user_id"]: r["values"].get(COMMENT) for r in submitted},
        "ratings": {r["user_id"]: _per_slot(r["values"], RATING, slots) for r in submitted},
        "labels": {r["user_id"]: _per_slot(r["values"], KEEP, slots) for r in submitted},
        "prompt": fields.get(PROMPT),
        "candidates": candidates,
        "suggested_ranking": suggested,
        "scores": scores,
        "meta": meta,
    }


def _pulled_row(agg: dict[str, Any], names: dict[str, str], context: dict[str, Any]) -> dict[str, Any]:
    users = list(dict.fromkeys([*agg["annotator_rankings"], *agg["annotator_ratings"], *agg["annotator_labels"]]))
    return {
        "record_id": agg["id"],
        "group": agg["meta"].get("group"),
        "task": agg["meta"].get("task"),
        "prompt": agg["prompt"],
        "candidates": agg["candidates"],
        "status": agg["status"],
        "annotations": [
            {"user_id": u, "username": names.get(u), "ranking": agg["annotator_rankings"].get(u, []), "best_strategy": agg["best_strategy"].get(u), "comment": agg["comments"].get(u),
             "ratings": agg["annotator_ratings"].get(u, []), "labels": agg["annotator_labels"].get(u, [])}
            for u in users
        ],
        "questions": context["questions"],
        "ranking": agg["ranking"],
        "ranking_scores": agg["ranking_scores"],
        "candidate_ratings": agg["candidate_ratings"],
        "candidate_labels": agg["candidate_labels"],
        "method": agg["method"],
        "agreement": agg["agreement"],
        "n_annotators": agg["n_annotators"],
        "best_strategy_votes": [{"strategy": s, "votes": v} for s, v in agg["best_strategy_votes"].items()],
        "suggested_ranking": agg["suggested_ranking"],
        "scores": agg["scores"],
        "model_fingerprint": agg["meta"].get("model_fingerprint"),
        **{k: v for k, v in context.items() if k != "questions"},
    }


def pull(
    dataset: str,
    workspace: str = "curator",
    client: Any = None,
    out: str | Path = "pulled.jsonl",
    method: str = "borda",
    progress: ProgressFn = no_progress,
    now: datetime | None = None,
    retry: RetryPolicy | None = None,
    page_size: int = PAGE_MAX,
) -> PullResult:
    """Fetch ``workspace``/``dataset``'s records with their responses and write the aggregated rows to ``out``.

    The result counts the records that were pending (no submitted response yet) at the read;
    ``pulled_at`` in each row is when the read began. ``retry`` is how failed requests are retried
    (nothing is written until every record was read); ``page_size`` is records per request.
    """
    if method not in METHODS:
        raise InputError(f"aggregation method {method!r} is unknown: use one of {', '.join(METHODS)} (--method)")
    out_p = Path(out)
    if out_p.suffix.lower() not in PULL_SUFFIXES:
        raise InputError(f"{out_p}: unsupported output type {out_p.suffix!r}: use .jsonl or .parquet")
    if not isinstance(page_size, int) or not 1 <= page_size <= PAGE_MAX:
        raise InputError(f"--page-size {page_size} is invalid: use an integer from 1 to {PAGE_MAX}")
    policy = retry or RetryPolicy()
    client = client or connect()
    ds = find_dataset(client, dataset, workspace, policy)
    if ds is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the SDK warns when a workspace is not found
            hidden = with_retry(lambda: client.workspaces(workspace), client, f"looking up workspace {workspace!r}", policy=policy) is None
        refusal = not_a_member(client, workspace, f"looking up workspace {workspace!r}", policy) if hidden else None
        if refusal is not None:
            raise refusal
        raise InputError(f"no dataset {dataset!r} in workspace {workspace!r} at {getattr(client, 'api_url', 'the server')}: check --dataset and --workspace")
    described = describe(ds.settings)
    n_slots = n_slots_of(described)
    mode = questions_of(described)
    if mode is None or not n_slots:
        raise InputError(f"dataset {dataset!r} was not made by `curator argilla push` (no '{RANKING}' or rating question over candidate slots)")
    progress("pull", 0, 1)
    started = now or datetime.now(timezone.utc)
    records, reads = read_consistent(client, ds, page_size, policy)
    questions = {str(q.id): q.name for q in ds.settings.questions}
    names = _usernames(client)
    inputs = [x for x in (_record_input(r, n_slots, questions) for r in records) if x is not None]
    skipped = len(records) - len(inputs)
    aggregated = aggregate(inputs, method)
    context = {
        "dataset": dataset,
        "workspace": workspace,
        "pulled_at": started.isoformat(timespec="seconds"),
        "curator_version": __version__,
        "format_version": PULLED_FORMAT,
        "questions": mode,
    }
    rows = [_pulled_row(a, names, context) for a in aggregated]
    write_rows(rows, out_p)
    stats = review.summary(rows)
    report = out_p.with_name(out_p.stem + ".report.md")
    write_text_atomic(report, review.render(stats, out_p.name))
    progress("pull", 1, 1)
    counts = summarize(rows)
    return PullResult(
        out_p, counts["records"], counts["submitted"], counts["discarded"], counts["pending"],
        sum(r["n_annotators"] for r in rows), skipped, tally_strategies(rows), reads, stats, report,
    )
