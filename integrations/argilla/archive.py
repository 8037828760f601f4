"""`curator export --format argilla`: the pulled dataset as Argilla's own on-disk form.

The folder has the layout of the SDK's ``Dataset.to_disk`` (``.argilla/dataset.json``,
``.argilla/settings.json``, written by the SDK, and ``records.json``), so
``rg.Dataset.from_disk(DIR)`` restores it into any Argilla 2.x server: settings, records,
suggestions and responses. ``records.json`` is written by curator from the server's record
models, because the SDK's own ``records.to_json`` (2.8.0) drops each response's status (a restored
submission comes back as a draft), drops ranks (ties are lost), and fails on a discarded response
sent without values. curator adds its card as ``README.md`` (provenance, and the agreement and
anchoring figures of the pulled file). The folder is written atomically.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curator import __version__
from curator.curation import review
from curator.curation.annotations import read_pulled
from curator.errors import InputError
from curator.io.atomic import write_dir_atomic
from curator.integrations.argilla.client import RetryPolicy, with_retry
from curator.integrations.argilla.pull import plain, read_consistent
from curator.integrations.argilla.push import find_dataset


def card(pulled: list[dict[str, Any]], source: Path, name: str, workspace: str, exported_at: str) -> str:
    stats = review.summary(pulled)
    return "\n".join([
        "---",
        "tags: [curator, argilla]",
        "---",
        f"# {name}: an Argilla dataset exported by curator",
        "",
        f"Made by curator {__version__} with `curator export --format argilla` on {exported_at}, for the pulled file `{source.name}`.",
        "Restore it with `rg.Dataset.from_disk(PATH, name=..., workspace=..., client=...)`: settings, records, suggestions and responses.",
        "",
        f"- Argilla dataset: {name} (workspace {workspace})",
        f"- records: {len(pulled)}, submitted: {stats['records']}",
        "",
        review.render(stats, source.name).replace("# Agreement report", "## Agreement report", 1),
    ])


def _value(question_kind: str, v: Any) -> Any:
    """A stored answer as the SDK's record dicts hold it: a ranking keeps its ranks (ties survive)."""
    v = v.get("value") if isinstance(v, dict) and "value" in v else v
    if question_kind == "ranking" and isinstance(v, list):
        return [x if isinstance(x, dict) else {"value": x} for x in v]
    return v


def record_dicts(models: list[Any], questions: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """The records in the form ``rg.Record.from_dict`` reads, statuses and ranks kept.

    ``questions``: question id → (name, kind)."""
    out = []
    for m in models:
        suggestions: dict[str, Any] = {}
        for sg in m.suggestions or []:
            name, kind = questions.get(str(sg.question_id), (getattr(sg, "question_name", None), ""))
            value = _value(kind, sg.value)
            if kind == "ranking":  # a ranking suggestion is a plain list in the SDK, in rank order
                value = [x["value"] for x in sorted(value, key=lambda x: x.get("rank") or 0)]
            suggestions[str(name)] = {"value": value, "score": sg.score, "agent": sg.agent}
        responses: dict[str, list[dict[str, Any]]] = {}
        for r in m.responses or []:
            status = str(getattr(r.status, "value", r.status))
            for q, v in (r.values or {}).items():
                kind = next((k for n, k in questions.values() if n == q), "")
                responses.setdefault(q, []).append({"value": _value(kind, plain(v)), "user_id": str(r.user_id), "status": status})
        meta = m.metadata or {}
        out.append({
            "id": str(m.external_id if m.external_id is not None else m.id),
            "fields": plain(dict(m.fields or {})),
            "metadata": dict(meta) if isinstance(meta, dict) else {x.name: x.value for x in meta},
            "suggestions": suggestions,
            "responses": responses,
            "vectors": {v.name: list(v.vector_values) for v in (m.vectors or [])} if isinstance(m.vectors, list) else dict(m.vectors or {}),
            "status": str(getattr(m.status, "value", m.status)),
        })
    return out


def export_argilla(pulled_path: str | Path, out: str | Path, client: Any, retry: RetryPolicy | None = None, now: datetime | None = None) -> Path:
    """Write the Argilla dataset that ``pulled_path`` was pulled from to the folder ``out``."""
    src = Path(pulled_path)
    rows = [row for _, row in read_pulled(src)]
    names = {(str(r.get("dataset")), str(r.get("workspace"))) for r in rows if r.get("dataset")}
    if len(names) != 1:
        raise InputError(f"{src}: --format argilla needs a file pulled from one dataset; it names {len(names)} ({', '.join(sorted(n for n, _ in names)) or 'none'}): pull one dataset into its own file")
    name, workspace = names.pop()
    out_p = Path(out)
    if out_p.suffix.lower() in (".jsonl", ".parquet", ".json", ".csv"):
        raise InputError(f"--out {out_p}: --format argilla writes a folder: give a folder name")
    if out_p.exists() and (not out_p.is_dir() or (any(out_p.iterdir()) and not (out_p / ".argilla").is_dir())):
        raise InputError(f"{out_p}: exists and is not an Argilla dataset folder written by curator: choose a new --out path")
    policy = retry or RetryPolicy()
    ds = find_dataset(client, name, workspace, policy)
    if ds is None:
        raise InputError(f"no dataset {name!r} in workspace {workspace!r} at {getattr(client, 'api_url', 'the server')} (named by {src}): check the server and the key")
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")

    models, _ = read_consistent(client, ds, policy=policy, with_vectors=True)
    questions = {str(q.id): (q.name, str(getattr(q, "type", "") or getattr(getattr(q, "_model", None), "type", "")).lower()) for q in ds.settings.questions}
    records = record_dicts(models, questions)

    def fill(tmp: Path) -> None:
        def write() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.to_disk(str(tmp), with_records=False)

        with_retry(write, client, f"exporting dataset {name!r} to disk", policy=policy)
        (tmp / "records.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        (tmp / "README.md").write_text(card(rows, src, name, workspace, stamp), encoding="utf-8")

    write_dir_atomic(out_p, fill)
    return out_p
