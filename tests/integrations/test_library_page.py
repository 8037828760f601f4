"""docs/library.md's Argilla blocks: push, an annotator answers through the UI's endpoint, pull, export.

The page's blocks run in order on the tiny model (see tests/test_library_doc.py), against a real
local argilla-server.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.integrations.test_roundtrip import make_annotator, respond
from tests.test_library_doc import run_page, tiny_settings


@pytest.mark.argilla
def test_library_page_argilla_blocks_push_pull_export(tmp_path: Path, argilla_server: Any) -> None:
    answered: list[str] = []

    def annotate(ns: dict[str, Any]) -> None:
        """An annotator accepts curator's suggested ranking on the first 10 records, through the UI's endpoint."""
        client = ns["client"]
        strategy_of = {c.id: c.strategy for c in ns["cands"]}
        _, key = make_annotator(argilla_server, client, "page-annotator", "curator")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = list(client.datasets(name="notebook-demo", workspace="curator").records(with_suggestions=True))
        for rec in records[:10]:
            slots = [s for s in rec.suggestions["ranking"].value if rec.metadata.get(f"candidate_id_{s.rsplit('_', 1)[1]}")]
            best = strategy_of[rec.metadata[f"candidate_id_{slots[0].rsplit('_', 1)[1]}"]]
            respond(argilla_server, str(rec._model.id), key, "submitted", [(s, k) for k, s in enumerate(slots, start=1)], best)
            answered.append(str(rec.id))

    settings = {**tiny_settings(tmp_path), "ARGILLA_URL": argilla_server.url, "ARGILLA_KEY": argilla_server.api_key}
    # validate and the one-call demo are run by the test above; the round trip does not need them
    ns = run_page({"python", "python argilla"}, settings, after={"push(": annotate}, skip=("run_validate", "run_demo"))
    assert ns["pushed"].total == 24 and len(answered) == 10
    assert (ns["pulled"].records, ns["pulled"].submitted, ns["pulled"].pending) == (24, 10, 14)
    assert (ns["sft"].rows, ns["dpo"].rows) == (10, 10)
    rows = [json.loads(line) for line in (tmp_path / "out" / "dpo.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all({"prompt", "chosen", "rejected"} <= set(r) for r in rows)
