"""`curator argilla push`: candidates (+ ranking, + gradient store) → one Argilla record per prompt.

Creates the workspace and the dataset when missing, or checks that the existing dataset's
settings fit (refusing with the setting that differs). Records go in batches through the bulk
upsert endpoint (keyed by the content-hash record id), each request retried with backoff on
transient failures (``RetryPolicy``). When the retries run out the error names the URL, how many
records were confirmed, and says to rerun: a rerun completes the push with no duplicates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import pandas as pd

from curator.config import ProgressFn, no_progress
from curator.io.data import Candidate
from curator.errors import InputError
from curator.integrations.argilla.client import RetryPolicy, connect, not_a_member, with_retry
from curator.integrations.argilla.mapping import RANKING, check_compatible, check_name, describe, group_candidates, group_vectors, plan_records, settings_for, spec_for, to_record
from curator.curation.ranking import RankingWeights


@dataclass(frozen=True)
class PushResult:
    created: int
    updated: int
    total: int
    dataset: str
    workspace: str
    dataset_created: bool
    url: str
    questions: str = "ranking"


def ensure_workspace(client: Any, name: str, policy: RetryPolicy | None = None) -> Any:
    """The workspace ``name``, created when missing (only an owner may; others get the refusal)."""
    import argilla as rg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = with_retry(lambda: client.workspaces(name), client, f"looking up workspace {name!r}", policy=policy)
    if ws is None:
        refusal = not_a_member(client, name, f"looking up workspace {name!r}", policy)
        if refusal is not None:
            raise refusal
        ws = with_retry(lambda: rg.Workspace(name=name, client=client).create(), client, f"creating workspace {name!r}", policy=policy)
    return ws


def find_dataset(client: Any, name: str, workspace: str, policy: RetryPolicy | None = None) -> Any | None:
    """The dataset ``name`` in ``workspace``, or None (also when the workspace does not exist)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if with_retry(lambda: client.workspaces(workspace), client, f"looking up workspace {workspace!r}", policy=policy) is None:
            return None
        return with_retry(lambda: client.datasets(name=name, workspace=workspace), client, f"looking up dataset {name!r}", policy=policy)


def existing_ids(dataset: Any, client: Any, policy: RetryPolicy | None = None) -> set[str]:
    """The record ids already in ``dataset``."""
    def fetch() -> set[str]:
        return {str(r.id) for r in dataset.records(with_suggestions=False, with_responses=False, with_vectors=False)}

    return with_retry(fetch, client, f"listing the records of dataset {dataset.name!r}", policy=policy)


def api_model(plan: dict[str, Any], ds: Any) -> Any:
    """The API model of a planned record, with the ranking suggestion's ranks made explicit.

    The SDK's ``records.log`` sends a ranking suggestion as ``[{"value": slot}, ...]``, which
    argilla-server 2.8.0 stores with null ranks, so the UI would not pre-fill the suggested order. The bulk
    upsert endpoint (the same one ``records.log`` uses, keyed by the record id) takes
    ``[{"value": slot, "rank": k}, ...]``.
    """
    record = to_record(plan)
    record.dataset = ds
    model = record.api_model()
    ranking_id = _question_id(ds, RANKING)
    for s in model.suggestions or []:
        if s.question_name == RANKING or (ranking_id is not None and s.question_id is not None and str(s.question_id) == ranking_id):
            s.value = [{"value": v["value"] if isinstance(v, dict) else v, "rank": k + 1} for k, v in enumerate(s.value or [])]
    return model


def _question_id(ds: Any, name: str) -> str | None:
    return next((str(q.id) for q in ds.settings.questions if q.name == name), None)


def check_target(dataset: str, workspace: str) -> None:
    """Refuse dataset and workspace names Argilla cannot hold (empty, too long, control characters), before any request."""
    check_name("dataset", dataset, "pass a plain --dataset NAME")
    check_name("workspace", workspace, "pass a plain --workspace NAME")


def push(
    candidates: list[Candidate],
    ranking: pd.DataFrame | None,
    dataset: str,
    workspace: str = "curator",
    store: Any = None,
    client: Any = None,
    batch_size: int = 50,
    progress: ProgressFn = no_progress,
    vector_dim: int = 256,
    seed: int = 0,
    weights: RankingWeights = RankingWeights(),
    attempts: int = 5,
    annotators: int | None = None,
    retry: RetryPolicy | None = None,
    questions: str = "auto",
    keep_threshold: float = 0.0,
) -> PushResult:
    """Push one record per prompt group of ``candidates`` to ``workspace``/``dataset``.

    ``ranking`` is the table from ``curator.curation.ranking.rank_candidates`` (suggestions and score
    metadata; None pushes without them). ``store`` is a ``GradientStore`` of the candidates (the
    record vectors; None pushes without). ``client`` defaults to ``connect()`` from the environment.
    ``annotators`` sets the dataset's task distribution (submitted responses a record needs before
    it leaves the annotators' queues; Argilla's default is 1); None leaves an existing dataset's.
    ``retry`` is how failed requests are retried (default: ``attempts`` tries, 0.5 s doubling);
    when they run out, the ``ArgillaError`` says how many records were confirmed and to rerun.
    ``questions`` (auto, ranking, rating, both) and ``keep_threshold``: see ``schema.spec_for``.
    """
    import argilla as rg

    check_target(dataset, workspace)
    if annotators is not None and annotators < 1:
        raise InputError(f"--annotators {annotators} is invalid: use an integer >= 1")
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size} is invalid: use an integer >= 1 (--batch-size)")
    spec = spec_for(candidates, vector_dim, store.dim if store is not None else None, weights, questions, keep_threshold)
    groups = group_candidates(candidates)
    vectors = group_vectors(groups, store, spec.vector_dim, seed) if store is not None and spec.vector_dim else None
    fingerprint = ((store.manifest.get("model") or {}).get("fingerprint") if store is not None else None)
    policy = retry or RetryPolicy(attempts=attempts)
    client = client or connect()
    url = str(getattr(client, "api_url", ""))

    progress("connect", 0, 1)
    ensure_workspace(client, workspace, policy)
    ds = find_dataset(client, dataset, workspace, policy)
    created_ds = ds is None
    if ds is None:
        settings = settings_for(spec, client)
        settings.distribution = rg.TaskDistribution(min_submitted=annotators or 1)
        ds = with_retry(lambda: rg.Dataset(name=dataset, workspace=workspace, settings=settings, client=client).create(), client, f"creating dataset {dataset!r}", policy=policy)
        known: set[str] = set()
    else:
        spec = check_compatible(describe(ds.settings), spec, dataset)
        known = existing_ids(ds, client, policy)
        if annotators is not None and ds.settings.distribution.min_submitted != annotators:
            ds.settings.distribution = rg.TaskDistribution(min_submitted=annotators)
            with_retry(ds.update, client, f"setting {annotators} annotators per record on dataset {dataset!r}", policy=policy)
    progress("connect", 1, 1)

    plans = plan_records(candidates, spec, ranking, vectors, fingerprint)
    total = len(plans)
    created = updated = 0
    progress("push", 0, total)
    for lo in range(0, total, batch_size):
        batch = plans[lo : lo + batch_size]

        def send(batch: list[dict[str, Any]] = batch) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                client.api.records.bulk_upsert(ds.id, [api_model(p, ds) for p in batch])

        hint = f"rerunning is safe: {lo} of {total} records were confirmed; rerun the same push once the server is back, records already sent are updated, not duplicated"
        with_retry(send, client, f"sending records {lo + 1}-{lo + len(batch)} of {total} to dataset {dataset!r}", policy=policy, hint=hint)
        new = sum(1 for p in batch if p["id"] not in known)
        created += new
        updated += len(batch) - new
        known.update(p["id"] for p in batch)
        progress("push", lo + len(batch), total)
    return PushResult(created, updated, total, dataset, workspace, created_ds, url, spec.questions)
