"""Questions that fit the data, on a real argilla-server: one candidate per prompt (rating and
keep/drop) and 2-50 (ranking), pulled with ratings, labels, agreement and anchoring, exported as
SFT, KTO and all-pairs DPO, and trained one TRL step each."""

from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from curator.curation.agreement import krippendorff_alpha
from curator.curation.export import export
from curator.io.data import Candidate
from curator.integrations.argilla.client import ArgillaError, with_retry
from curator.integrations.argilla.mapping import suggested_rating
from curator.integrations.argilla.pull import pull
from curator.integrations.argilla.push import api_model, push
from tests.integrations.test_roundtrip import demo_set, make_annotator  # noqa: F401  (demo_set: a fixture)
from tests.test_trl_formats import _train_one_step

pytestmark = pytest.mark.argilla


def respond(server: Any, record_uuid: str, key: str, values: dict[str, Any]) -> None:
    """POST /api/v1/records/{id}/responses as the UI does."""
    r = httpx.post(f"{server.url}/api/v1/records/{record_uuid}/responses", json={"status": "submitted", "values": {k: {"value": v} for k, v in values.items()}}, headers={"X-Argilla-Api-Key": key})
    assert r.status_code == 201, r.text


def records_by_group(client: Any, name: str) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = client.datasets(name=name, workspace="curator")
        return {r.metadata["group"]: r for r in ds.records(with_suggestions=True, with_responses=False)}


def ranking_table(cands: list[Candidate], scores: list[float]) -> pd.DataFrame:
    rows = []
    for c, s in zip(cands, scores):
        rows.append({"id": c.id, "group": c.group, "strategy": c.strategy, "task": c.task, "rank": 1, "score": s, "alignment": s, "influence": None})
    table = pd.DataFrame(rows)
    table["rank"] = table.groupby("group")["score"].rank(ascending=False, method="first").astype(int)
    return table


def test_one_candidate_per_prompt_is_rated_kept_pulled_and_exported(argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    cands = [Candidate(f"c{i}", f"Question {i}: name a colour.", f"Answer {i}: blue.", "direct", "colours", f"g{i}") for i in range(4)]
    scores = [1.0, -1.0, 0.2, -0.5]
    name = f"single-{uuid.uuid4().hex[:8]}"
    r = push(cands, ranking_table(cands, scores), name, client=argilla_client)
    assert r.questions == "rating" and r.total == 4
    ds = argilla_client.datasets(name=name, workspace="curator")
    assert sorted(q.name for q in ds.settings.questions) == ["comment", "keep_1", "rating_1"]
    recs = records_by_group(argilla_client, name)
    for i, s in enumerate(scores):
        sugg = {x.question_name: x.value for x in recs[f"g{i}"].suggestions}
        assert sugg == {"rating_1": suggested_rating(s), "keep_1": "keep" if s >= 0 else "drop"}
    given = {"ann": ([5, 2, 4, 1], ["keep", "drop", "keep", "drop"]), "bob": ([4, 1, 4, 2], ["keep", "drop", "drop", "drop"])}
    for user, (ratings, labels) in given.items():
        _, key = make_annotator(argilla_server, argilla_client, f"{user}-{uuid.uuid4().hex[:6]}", "curator")
        for i in range(4):
            respond(argilla_server, str(recs[f"g{i}"]._model.id), key, {"rating_1": ratings[i], "keep_1": labels[i]})
    res = pull(name, client=argilla_client, out=tmp_path / "pulled.jsonl")
    assert (res.submitted, res.responses) == (4, 8)
    rows = {x["group"]: x for x in map(json.loads, res.out.read_text().splitlines())}
    assert rows["g0"]["questions"] == "rating" and rows["g0"]["ranking"] == []
    assert [rows[f"g{i}"]["candidate_ratings"][0]["mean"] for i in range(4)] == [4.5, 1.5, 4.0, 1.5]
    assert [rows[f"g{i}"]["candidate_labels"][0]["label"] for i in range(4)] == ["keep", "drop", None, "drop"]
    want_ratings = krippendorff_alpha([{"ann": given["ann"][0][i], "bob": given["bob"][0][i]} for i in range(4)], "ordinal")
    want_labels = krippendorff_alpha([{"ann": given["ann"][1][i], "bob": given["bob"][1][i]} for i in range(4)], "nominal")
    assert res.agreement["alpha"]["ratings"] == pytest.approx(want_ratings) and res.agreement["alpha"]["labels"] == pytest.approx(want_labels)
    report = res.report.read_text()
    assert f"ratings (ordinal): {want_ratings:.3f}" in report and f"labels (nominal): {want_labels:.3f}" in report
    sft = export(res.out, "sft", tmp_path / "sft.jsonl", sft_from="kept")
    assert [json.loads(x)["candidate_id"] for x in sft.out.read_text().splitlines()] == ["c0"]
    rated = export(res.out, "sft", tmp_path / "rated.jsonl", sft_from="rated")
    assert [json.loads(x)["candidate_id"] for x in rated.out.read_text().splitlines()] == ["c0", "c2"]
    kto = export(res.out, "kto", tmp_path / "kto.jsonl")
    assert [(x["candidate_id"], x["label"]) for x in map(json.loads, kto.out.read_text().splitlines())] == [("c0", True), ("c1", False), ("c3", False)]
    assert _train_one_step("sft", rated.out, tmp_path) > 0 and _train_one_step("kto", kto.out, tmp_path) > 0


def test_ranked_prompts_two_annotators_report_anchoring_and_train_dpo(argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    cands = [Candidate(f"g{k}-{s}", f"Question {k}?", f"{s} answer to {k}.", s, "t", f"g{k}") for k in range(3) for s in ("direct", "cot", "clarify")]
    scores = [0.5, 1.5, -1.0] * 3  # the suggestion: cot, direct, clarify
    name = f"ranked-{uuid.uuid4().hex[:8]}"
    r = push(cands, ranking_table(cands, scores), name, client=argilla_client, questions="both")
    assert r.questions == "both"
    ds = argilla_client.datasets(name=name, workspace="curator")
    assert {"ranking", "best_strategy", "rating_1", "keep_1", "rating_3", "keep_3"} <= {q.name for q in ds.settings.questions}
    recs = records_by_group(argilla_client, name)
    slot_of = {c.id: f"candidate_{i}" for g in ("g0", "g1", "g2") for i, c in enumerate([x for x in cands if x.group == g], start=1)}
    # ann keeps the suggested order; bob puts clarify first
    orders = {"ann": ["cot", "direct", "clarify"], "bob": ["clarify", "cot", "direct"]}
    for user, order in orders.items():
        _, key = make_annotator(argilla_server, argilla_client, f"{user}-{uuid.uuid4().hex[:6]}", "curator")
        for k in range(3):
            ranking = [{"value": slot_of[f"g{k}-{s}"], "rank": n + 1} for n, s in enumerate(order)]
            respond(argilla_server, str(recs[f"g{k}"]._model.id), key, {"ranking": ranking, "best_strategy": order[0], "rating_1": 3, "keep_1": "keep"})
    res = pull(name, client=argilla_client, out=tmp_path / "pulled.jsonl")
    anc = res.agreement["anchoring"]
    ann = next(v for u, v in anc["annotators"].items() if u.startswith("ann"))
    bob = next(v for u, v in anc["annotators"].items() if u.startswith("bob"))
    assert (ann["unchanged"], ann["unchanged_rate"], bob["unchanged"]) == (3, 1.0, 0)
    assert anc["overall"]["tau_between_annotators"] == pytest.approx(-1 / 3)
    assert "Anchoring on curator's suggestion" in res.report.read_text()
    dpo = export(res.out, "dpo", tmp_path / "dpo.jsonl", dpo_pairs="all-pairs")
    pairs = [json.loads(x) for x in dpo.out.read_text().splitlines()]
    assert dpo.rows == len(pairs) > 0 and {p["margin_kind"] for p in pairs} == {"rank"}
    assert _train_one_step("dpo", dpo.out, tmp_path) > 0


def test_server_errors_show_the_servers_own_detail(argilla_server: Any, argilla_client: Any) -> None:
    cands = [Candidate("c0", "Q?", "A.", "direct", None, "g0")]
    name = f"detail-{uuid.uuid4().hex[:8]}"
    push(cands, ranking_table(cands, [0.0]), name, client=argilla_client)
    ds = argilla_client.datasets(name=name, workspace="curator")
    plan = {"id": "bad-1", "fields": {"prompt": "Q?", "candidate_1": "A."}, "metadata": {"group": "g9"}, "suggestions": [{"question_name": "rating_1", "value": 9, "score": 0.5, "agent": "test"}]}
    with pytest.raises(ArgillaError) as err:
        with_retry(lambda: argilla_client.api.records.bulk_upsert(ds.id, [api_model(plan, ds)]), argilla_client, "sending a bad record")
    message = str(err.value)
    assert "the server said HTTP 422" in message and "9" in message, message


def test_export_argilla_restores_with_from_disk_into_a_second_dataset(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    import argilla as rg

    from tests.test_cli import invoke

    name = f"disk-{uuid.uuid4().hex[:8]}"
    push(demo_set["candidates"], demo_set["ranking"], name, client=argilla_client, store=demo_set["store"], questions="both")
    recs = records_by_group(argilla_client, name)
    g0, g1 = demo_set["groups"][:2]
    _, key = make_annotator(argilla_server, argilla_client, f"ann-{uuid.uuid4().hex[:6]}", "curator")
    tied = [{"value": "candidate_2", "rank": 1}, {"value": "candidate_1", "rank": 2}, {"value": "candidate_3", "rank": 2}, {"value": "candidate_4", "rank": 3}]
    respond(argilla_server, str(recs[g0]._model.id), key, {"ranking": tied, "best_strategy": "cot", "rating_1": 2, "keep_1": "drop", "rating_2": 5, "keep_2": "keep"})
    r = httpx.post(f"{argilla_server.url}/api/v1/records/{recs[g1]._model.id}/responses", json={"status": "discarded", "values": None}, headers={"X-Argilla-Api-Key": key})
    assert r.status_code == 201, r.text  # a discarded response without values: the SDK's own to_json fails on it
    pulled = pull(name, client=argilla_client, out=tmp_path / "pulled.jsonl").out
    out = tmp_path / "disk"
    r = invoke(["export", str(pulled), "--format", "argilla", "--out", str(out), "--api-url", argilla_server.url, "--api-key", argilla_server.api_key])
    assert r.exit_code == 0, r.output
    assert (out / ".argilla" / "settings.json").is_file() and "Agreement report" in (out / "README.md").read_text()
    copy = f"{name}-copy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restored = rg.Dataset.from_disk(str(out), name=copy, workspace="curator", client=argilla_client)
        original = argilla_client.datasets(name=name, workspace="curator")

        def snapshot(ds: Any) -> dict[str, Any]:
            """Each record as the server holds it (read as models: the SDK's Record objects fail on a
            discarded response without values), user ids and statuses included."""
            from curator.integrations.argilla.archive import record_dicts
            from curator.integrations.argilla.pull import read_consistent

            models, _ = read_consistent(argilla_client, ds, with_vectors=True)
            questions = {str(q.id): (q.name, str(q.type).lower()) for q in ds.settings.questions}
            got = {}
            for rec in record_dicts(models, questions):
                rec["vectors"] = {k: [round(float(x), 6) for x in v] for k, v in rec["vectors"].items()}
                rec["responses"] = {q: sorted(rs, key=lambda x: x["user_id"]) for q, rs in rec["responses"].items()}
                got[rec.pop("id")] = rec
            return got

        assert sorted(q.name for q in restored.settings.questions) == sorted(q.name for q in original.settings.questions)
        a, b = snapshot(original), snapshot(restored)
    assert a == b and len(a) == len(demo_set["groups"])
    assert all(s["vectors"] for s in a.values())
    statuses = sorted({x["status"] for s in a.values() for rs in s["responses"].values() for x in rs})
    assert statuses == ["submitted"], statuses  # the discarded response has no values to carry: what the server shows per question
    stored = json.loads((out / "records.json").read_text())
    ranked = next(x for x in stored if x["metadata"]["group"] == g0)["responses"]["ranking"][0]
    assert ranked["status"] == "submitted" and ranked["value"] == tied  # the tie survives on disk


def test_push_to_hub_offline_is_one_line_and_keeps_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_cli import invoke
    from tests.test_export import rated_rows, write

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pulled = write(tmp_path / "p.jsonl", rated_rows())
    r = invoke(["export", str(pulled), "--format", "kto", "--out", str(tmp_path / "kto"), "--push-to-hub", "me/curated"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "the Hub is offline here" in r.stderr
    import datasets

    folder = datasets.load_from_disk(str(tmp_path / "kto"))  # the offline equivalent: save_to_disk with the same card
    assert folder.num_rows == 5 and "Krippendorff's alpha" in (tmp_path / "kto" / "README.md").read_text()
    bad = invoke(["export", str(pulled), "--format", "kto", "--out", str(tmp_path / "k2.jsonl"), "--push-to-hub", "no-slash"])
    assert bad.exit_code == 2 and "is not a Hub repo id" in bad.stderr
