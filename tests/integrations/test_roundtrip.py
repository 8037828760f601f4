"""Push → annotate (two users, through the UI's responses endpoint) → pull → export, on a real argilla-server.

Tests marked ``argilla`` use the session fixtures ``argilla_server`` (``.url``, ``.api_key``) and
``argilla_client`` from ``tests/integrations/conftest.py``. The others are pure checks of the
mapping and the client helpers.
"""

from __future__ import annotations

import json
import socket
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from curator.io.data import Candidate
from curator.errors import CuratorError, InputError
from curator.curation.export import export
from curator.integrations.argilla import mapping
from curator.integrations.argilla.client import ArgillaAuthError, ArgillaError, connect, with_retry
from curator.integrations.argilla.mapping import DatasetMismatchError, check_compatible, plan_records, reduce_vector, spec_for
from curator.integrations.argilla.pull import pull
from curator.integrations.argilla.push import ensure_workspace, push
from curator.curation.ranking import rank_candidates

STRATEGIES = ["direct", "cot", "clarify", "evaluate"]  # slot order = the order strategies first appear


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """6 demo groups × 4 strategies (the last group lacks 'evaluate'), a tiny store, a ranking."""
    from curator.config import GradientConfig, IndexConfig, ProjectionConfig
    from curator.io.data import load_candidates, load_eval
    from curator.demo import demo_data_dir, subset
    from curator.influence.indexing import Featurizer, index_rows
    from curator.store.store import GradientStore

    d = demo_data_dir()
    cands, _ = subset(load_candidates(d / "candidates.jsonl"), load_eval(d / "eval.jsonl"), 2, 3)
    groups = list(dict.fromkeys(c.group for c in cands))
    cands = [c for c in cands if not (c.group == groups[-1] and c.strategy == "evaluate")]
    out = tmp_path_factory.mktemp("store") / "train_store"
    cfg = IndexConfig(model="tiny-random", projection=ProjectionConfig(dim=64), gradient=GradientConfig(max_length=96), batch_size=8)
    index_rows(Featurizer(cfg), cands, out, "candidates")
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"id": [c.id for c in cands], "strategy": [c.strategy for c in cands], "group": [c.group for c in cands],
                           "task": [c.task for c in cands], "alignment": rng.random(len(cands))})
    return {"candidates": cands, "groups": groups, "store": GradientStore.open(out), "ranking": rank_candidates(scores)}


def cid(group: str, strategy: str) -> str:
    return f"{group}-{strategy}"


def server_count(client: Any, name: str, workspace: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = client.datasets(name=name, workspace=workspace)
    return sum(1 for _ in ds.records(with_suggestions=False, with_responses=False, with_vectors=False))


def make_annotator(server: Any, client: Any, name: str, workspace: str) -> tuple[str, str]:
    """A new annotator in ``workspace``: (user id, API key), through the REST API the UI uses."""
    owner = {"X-Argilla-Api-Key": server.api_key}
    ensure_workspace(client, workspace)
    r = httpx.post(f"{server.url}/api/v1/users", json={"username": name, "first_name": name, "password": "annotator-pw-1", "role": "annotator"}, headers=owner)
    assert r.status_code == 201, r.text
    user = r.json()
    ws = next(w for w in httpx.get(f"{server.url}/api/v1/me/workspaces", headers=owner).json()["items"] if w["name"] == workspace)
    r = httpx.post(f"{server.url}/api/v1/workspaces/{ws['id']}/users", json={"user_id": user["id"]}, headers=owner)
    assert r.status_code in (200, 201), r.text
    return user["id"], user["api_key"]


def respond(server: Any, record_uuid: str, key: str, status: str, ranking: list[tuple[str, int]] | None = None, best: str | None = None, comment: str | None = None) -> None:
    """POST /api/v1/records/{id}/responses as the UI does (argilla-server 2.8.0's ResponseCreate)."""
    body: dict[str, Any] = {"status": status}
    if ranking is not None:
        values: dict[str, Any] = {"ranking": {"value": [{"value": s, "rank": k} for s, k in ranking]}}
        if best:
            values["best_strategy"] = {"value": best}
        if comment:
            values["comment"] = {"value": comment}
        body["values"] = values
    else:
        body["values"] = None
    r = httpx.post(f"{server.url}/api/v1/records/{record_uuid}/responses", json=body, headers={"X-Argilla-Api-Key": key})
    assert r.status_code == 201, r.text


# --------------------------------------------------------------------------- the round trip


@pytest.mark.argilla
def test_push_annotate_pull_export(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    cands, groups, store, ranking = demo_set["candidates"], demo_set["groups"], demo_set["store"], demo_set["ranking"]
    name, ws = f"roundtrip-{uuid.uuid4().hex[:8]}", "curator"
    seen: list[tuple[str, int, int]] = []

    first = push(cands, ranking, name, ws, store=store, client=argilla_client, batch_size=4, progress=lambda s, d, t: seen.append((s, d, t)))
    assert (first.created, first.updated, first.total, first.dataset_created) == (6, 0, 6, True)
    assert ("push", 6, 6) in seen
    assert server_count(argilla_client, name, ws) == 6
    again = push(cands, ranking, name, ws, store=store, client=argilla_client, batch_size=4)
    assert (again.created, again.updated, again.dataset_created) == (0, 6, False)
    assert server_count(argilla_client, name, ws) == 6  # idempotent: upsert by content-hash id

    # what the server holds: slots, suggestion in the ranking's order, metadata, vector
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = argilla_client.datasets(name=name, workspace=ws)
    assert "influence" in ds.settings.guidelines and "alignment" in ds.settings.guidelines
    records = {r.metadata["group"]: r for r in ds.records(with_suggestions=True, with_responses=False, with_vectors=True)}
    assert set(records) == set(groups)
    ranked = ranking.sort_values(["group", "rank"])
    for g, rec in records.items():
        members = [s for s in STRATEGIES if any(c.id == cid(g, s) for c in cands)]
        assert [rec.metadata.get(f"candidate_id_{i}") for i in range(1, len(members) + 1)] == [cid(g, s) for s in members]
        by_id = {c.id: c for c in cands}
        assert [rec.fields[f"candidate_{i}"] for i in range(1, len(members) + 1)] == [by_id[cid(g, s)].response for s in members]
        sugg = {s.question_name: s for s in rec.suggestions}
        want = [f"candidate_{members.index(i.rsplit('-', 1)[1]) + 1}" for i in ranked[ranked.group == g]["id"]]
        assert sugg["ranking"].value[: len(members)] == want and sugg["ranking"].agent == "curator/0.1.0"
        assert all(0.0 <= x <= 1.0 for x in sugg["ranking"].score)
        vec = np.asarray(rec.vectors["gradient"])
        assert vec.shape == (64,) and np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    assert records[groups[-1]].fields["candidate_4"] == mapping.EMPTY_SLOT

    # two annotators answer through the UI's endpoint
    suffix = uuid.uuid4().hex[:6]
    u1, k1 = make_annotator(argilla_server, argilla_client, f"ann1-{suffix}", ws)
    u2, k2 = make_annotator(argilla_server, argilla_client, f"ann2-{suffix}", ws)
    uuid_of = {g: str(r._model.id) for g, r in records.items()}
    g0, g1, g2, g3, g4, g5 = groups
    # g0: both submit; ann1 cot > direct > clarify > evaluate, ann2 cot > {direct, clarify} > evaluate
    respond(argilla_server, uuid_of[g0], k1, "submitted", [("candidate_2", 1), ("candidate_1", 2), ("candidate_3", 3), ("candidate_4", 4)], "cot")
    respond(argilla_server, uuid_of[g0], k2, "submitted", [("candidate_2", 1), ("candidate_1", 2), ("candidate_3", 2), ("candidate_4", 3)], "cot", "cot is clearest")
    # g1: ann1 submits the reverse of the slot order; ann2 leaves a draft (not counted)
    respond(argilla_server, uuid_of[g1], k1, "submitted", [("candidate_4", 1), ("candidate_3", 2), ("candidate_2", 3), ("candidate_1", 4)], "evaluate")
    respond(argilla_server, uuid_of[g1], k2, "draft", [("candidate_1", 1)])
    # g2: ann1 discards with no values (the SDK's record iterator crashes on these), ann2 discards with values
    respond(argilla_server, uuid_of[g2], k1, "discarded")
    respond(argilla_server, uuid_of[g2], k2, "discarded", [("candidate_1", 1), ("candidate_2", 2), ("candidate_3", 3), ("candidate_4", 4)], "direct")
    # g5 (3 candidates): ann2 ranks clarify > direct > cot, the empty slot last
    respond(argilla_server, uuid_of[g5], k2, "submitted", [("candidate_3", 1), ("candidate_1", 2), ("candidate_2", 3), ("candidate_4", 4)], "clarify")
    # g3, g4: nobody answers (pending)

    res = pull(name, ws, argilla_client, tmp_path / "pulled.jsonl")
    assert (res.records, res.submitted, res.discarded, res.pending, res.responses) == (6, 3, 1, 2, 4)
    assert res.strategy_votes == {"cot": 2, "clarify": 1, "evaluate": 1}
    rows = {r["group"]: r for r in map(json.loads, (tmp_path / "pulled.jsonl").read_text().splitlines())}
    r0 = rows[g0]
    assert r0["status"] == "submitted" and r0["n_annotators"] == 2 and r0["dataset"] == name
    assert r0["ranking"] == [cid(g0, s) for s in ("cot", "direct", "clarify", "evaluate")]  # Borda 6, 3.5, 2.5, 0
    assert r0["agreement"] == pytest.approx(222 / 228)  # Kendall's W with ann2's tie corrected
    ann = {a["user_id"]: a for a in r0["annotations"]}
    assert [(x["candidate_id"], x["rank"]) for x in ann[u2]["ranking"]] == [(cid(g0, "cot"), 1), (cid(g0, "direct"), 2), (cid(g0, "clarify"), 2), (cid(g0, "evaluate"), 3)]
    assert ann[u2]["comment"] == "cot is clearest" and ann[u1]["best_strategy"] == "cot"
    assert ann[u1]["username"] == f"ann1-{suffix}"
    assert r0["best_strategy_votes"] == [{"strategy": "cot", "votes": 2}]
    assert r0["model_fingerprint"] == store.manifest["model"]["fingerprint"]
    assert {c["id"]: c["text"] for c in r0["candidates"]} == {c.id: c.response for c in cands if c.group == g0}
    r1 = rows[g1]
    assert r1["n_annotators"] == 1 and r1["agreement"] is None and [a["user_id"] for a in r1["annotations"]] == [u1]
    assert r1["ranking"] == [cid(g1, s) for s in ("evaluate", "clarify", "cot", "direct")]
    assert rows[g2]["status"] == "discarded" and rows[g2]["ranking"] == []
    assert rows[g3]["status"] == rows[g4]["status"] == "pending"
    assert [c["id"] for c in rows[g5]["candidates"]] == [cid(g5, s) for s in ("direct", "cot", "clarify")]
    assert rows[g5]["ranking"] == [cid(g5, s) for s in ("clarify", "direct", "cot")]

    text = {c.id: c.response for c in cands}
    prompt = {c.group: c.prompt for c in cands}
    sft = export(tmp_path / "pulled.jsonl", "sft", tmp_path / "sft.jsonl")
    sft_rows = [json.loads(x) for x in sft.out.read_text().splitlines()]
    assert [(r["group"], r["candidate_id"]) for r in sft_rows] == [(g0, cid(g0, "cot")), (g1, cid(g1, "evaluate")), (g5, cid(g5, "clarify"))]
    for r in sft_rows:
        assert r["prompt"] == prompt[r["group"]] and r["completion"] == text[r["candidate_id"]] and r["dataset"] == name
    assert sft.filtered["discarded"] == 1 and sft.filtered["pending"] == 2
    dpo = export(tmp_path / "pulled.jsonl", "dpo", tmp_path / "dpo.parquet")
    import pyarrow.parquet as pq

    dpo_rows = pq.read_table(dpo.out).to_pylist()
    want = [(g0, "cot", "direct"), (g0, "cot", "clarify"), (g0, "cot", "evaluate"), (g1, "evaluate", "clarify"), (g1, "evaluate", "cot"),
            (g1, "evaluate", "direct"), (g5, "clarify", "direct"), (g5, "clarify", "cot")]
    assert [(r["group"], r["chosen_strategy"], r["rejected_strategy"]) for r in dpo_rows] == want
    for r in dpo_rows:
        assert r["prompt"] == prompt[r["group"]] and r["chosen"] == text[r["chosen_id"]] and r["rejected"] == text[r["rejected_id"]]
    card = (tmp_path / "dpo.README.md").read_text()
    assert f"Argilla dataset: {name}" in card and "records pulled: 6" in card and store.manifest["model"]["fingerprint"] in card


@pytest.mark.argilla
def test_incompatible_dataset_is_refused(demo_set: dict[str, Any], argilla_client: Any) -> None:
    cands = demo_set["candidates"]
    name = f"compat-{uuid.uuid4().hex[:8]}"
    push(cands, demo_set["ranking"], name, "curator", client=argilla_client)
    g = cands[0]
    extra = cands + [Candidate(f"{g.group}-teacher", g.prompt, "A teacher's answer.", "teacher", g.task, g.group)]
    with pytest.raises(DatasetMismatchError, match=rf"dataset '{name}' has question 'ranking' with 4 options, this push needs 5: push to a new --dataset name") as err:
        push(extra, None, name, "curator", client=argilla_client)
    assert err.value.exit_code == 2
    chat = [Candidate(c.id, [{"role": "user", "content": c.prompt}], c.response, c.strategy, c.task, c.group) for c in cands]  # type: ignore[list-item]
    with pytest.raises(DatasetMismatchError, match="has a text field 'prompt', this push needs a chat field"):
        push(chat, None, name, "curator", client=argilla_client)
    with pytest.raises(DatasetMismatchError, match="no vector 'gradient'"):
        push(cands, None, name, "curator", store=demo_set["store"], client=argilla_client)


@pytest.mark.argilla
def test_rerun_after_failure_part_way_completes_without_duplicates(demo_set: dict[str, Any], argilla_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from argilla._api._records import RecordsAPI

    cands, name = demo_set["candidates"], f"rerun-{uuid.uuid4().hex[:8]}"
    real_upsert = RecordsAPI.bulk_upsert
    calls = {"n": 0}

    def flaky(self: Any, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] >= 2:  # the connection drops after the first batch went in
            raise httpx.ConnectError("connection refused")
        return real_upsert(self, *a, **kw)

    monkeypatch.setattr(RecordsAPI, "bulk_upsert", flaky)
    with pytest.raises(ArgillaError, match="gave up after 2 attempts; rerunning is safe") as err:
        push(cands, demo_set["ranking"], name, "curator", client=argilla_client, batch_size=2, attempts=2)
    assert err.value.exit_code == 1
    monkeypatch.setattr(RecordsAPI, "bulk_upsert", real_upsert)
    assert server_count(argilla_client, name, "curator") == 2
    res = push(cands, demo_set["ranking"], name, "curator", client=argilla_client, batch_size=2)
    assert (res.created, res.updated) == (4, 2)
    assert server_count(argilla_client, name, "curator") == 6


@pytest.mark.argilla
def test_chat_prompts_round_trip_as_messages(argilla_server: Any, argilla_client: Any, tmp_path: Path) -> None:
    chat = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 2?"}]
    cands = [Candidate(f"c-{s}", chat, f"4 ({s})", s, "math", "c") for s in ("direct", "cot")]  # type: ignore[arg-type]
    name = f"chat-{uuid.uuid4().hex[:8]}"
    push(cands, None, name, "curator", client=argilla_client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = next(iter(argilla_client.datasets(name=name, workspace="curator").records(with_responses=False)))
    _, key = make_annotator(argilla_server, argilla_client, f"chat-{uuid.uuid4().hex[:6]}", "curator")
    respond(argilla_server, str(rec._model.id), key, "submitted", [("candidate_2", 1), ("candidate_1", 2)], "cot")
    res = pull(name, "curator", argilla_client, tmp_path / "pulled.parquet", method="mean_rank")
    assert (res.records, res.submitted) == (1, 1)
    import pyarrow.parquet as pq

    row = pq.read_table(tmp_path / "pulled.parquet").to_pylist()[0]
    assert row["prompt"] == chat and row["ranking"] == ["c-cot", "c-direct"] and row["method"] == "mean_rank"
    sft = [json.loads(x) for x in export(tmp_path / "pulled.parquet", "sft", tmp_path / "sft.jsonl").out.read_text().splitlines()]
    assert sft[0]["messages"] == chat + [{"role": "assistant", "content": "4 (cot)"}]


@pytest.mark.argilla
def test_wrong_key_or_permission_is_refused_without_leaking_it(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any) -> None:
    key = "wrong-key-" + uuid.uuid4().hex
    with pytest.raises(ArgillaAuthError, match="the API key or the workspace permission is wrong") as err:
        connect(argilla_server.url, key)
    assert key not in str(err.value) and err.value.exit_code == 1
    _, annotator_key = make_annotator(argilla_server, argilla_client, f"perm-{uuid.uuid4().hex[:6]}", "curator")
    annotator = connect(argilla_server.url, annotator_key)
    with pytest.raises(ArgillaAuthError, match="the API key or the workspace permission is wrong") as err:
        push(demo_set["candidates"], None, f"perm-{uuid.uuid4().hex[:8]}", "curator", client=annotator)
    assert annotator_key not in str(err.value)


# --------------------------------------------------------------------------- no server needed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_names_the_url_not_the_key(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    url, key = f"http://127.0.0.1:{_free_port()}", "secret-" + uuid.uuid4().hex
    monkeypatch.setenv("ARGILLA_API_URL", url)
    monkeypatch.setenv("ARGILLA_API_KEY", key)
    with pytest.raises(ArgillaError) as err:
        connect(retries=0)
    assert f"cannot reach the Argilla server at {url}" in str(err.value) and err.value.exit_code == 1
    out = capsys.readouterr()
    assert key not in str(err.value) + out.out + out.err + caplog.text
    monkeypatch.delenv("ARGILLA_API_KEY")
    with pytest.raises(InputError, match="ARGILLA_API_KEY"):
        connect()


def test_retry_backs_off_then_succeeds_or_gives_up() -> None:
    sleeps: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise httpx.ConnectError("refused")
        return "ok"

    assert with_retry(flaky, sleep=sleeps.append) == "ok" and sleeps == [0.5, 1.0]
    sleeps.clear()
    with pytest.raises(ArgillaError, match="gave up after 4 attempts"):
        with_retry(lambda: (_ for _ in ()).throw(httpx.ReadTimeout("slow")), attempts=4, max_delay=1.0, sleep=sleeps.append)
    assert sleeps == [0.5, 1.0, 1.0]


def test_vector_reduction_is_seeded_and_normalised() -> None:
    v = np.random.default_rng(1).normal(size=512).astype(np.float32)
    a, b = reduce_vector(v, 256, seed=3), reduce_vector(v, 256, seed=3)
    assert a.shape == (256,) and np.array_equal(a, b) and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert not np.array_equal(a, reduce_vector(v, 256, seed=4))
    w = np.random.default_rng(2).normal(size=512).astype(np.float32)
    cos = float(v @ w / np.linalg.norm(v) / np.linalg.norm(w))
    assert float(a @ reduce_vector(w, 256, seed=3)) == pytest.approx(cos, abs=0.2)  # Johnson–Lindenstrauss
    small = reduce_vector(np.array([3.0, 4.0]), 256)
    assert np.allclose(small, [0.6, 0.8])


def test_record_plan_ids_slots_and_compatibility() -> None:
    cands = [Candidate(f"q-{s}", "Q?", f"answer {s}", s, "t", "q") for s in ("cot", "direct")] + [Candidate("r-direct", "R?", "r", "direct", "t", "r")]
    spec = spec_for(cands)
    assert (spec.n_slots, spec.strategies, spec.chat, spec.vector_dim) == (2, ("cot", "direct"), False, None)
    plans = plan_records(cands, spec)
    by_id = lambda ps: sorted(ps, key=lambda p: p["id"])  # noqa: E731
    assert by_id(plans) == by_id(plan_records(list(reversed(cands)), spec))  # input order moves no slot or id
    assert plans[0]["metadata"]["candidate_id_1"] == "q-cot" and plans[1]["fields"]["candidate_2"] == mapping.EMPTY_SLOT
    assert plans[0]["id"] == mapping.record_id("Q?", ["q-cot", "q-direct"]) and plans[0]["suggestions"] == []
    existing = {"fields": {"prompt": "text", "candidate_1": "text", "candidate_2": "text"},
                "questions": {"ranking": ("ranking", ["candidate_1", "candidate_2"]), "best_strategy": ("label_selection", ["direct", "cot", "x"])},
                "metadata": {k: t for k, (t, _) in spec.metadata().items()}, "vectors": {}}
    assert check_compatible(existing, spec, "d").strategies == ("direct", "cot", "x")  # the dataset's label order wins
    existing["questions"]["best_strategy"] = ("label_selection", ["direct"])
    with pytest.raises(DatasetMismatchError, match=r"question 'best_strategy' with strategies \['direct'\], this push also needs \['cot'\]"):
        check_compatible(existing, spec, "d")
    with pytest.raises(InputError, match="different prompts"):
        plan_records(cands + [Candidate("q-x", "other?", "x", "x", None, "q")], spec_for(cands))
    with pytest.raises(CuratorError, match="vector dim"):
        spec_for(cands, vector_dim=5000, store_dim=8192)


@pytest.mark.argilla
def test_annotators_sets_the_task_distribution(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any) -> None:
    cands, name = demo_set["candidates"], f"dist-{uuid.uuid4().hex[:8]}"

    def min_submitted() -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return argilla_client.datasets(name=name, workspace="curator").settings.distribution.min_submitted

    push(cands, demo_set["ranking"], name, "curator", client=argilla_client, annotators=2)
    assert min_submitted() == 2
    push(cands, demo_set["ranking"], name, "curator", client=argilla_client)  # unset: left as it is
    assert min_submitted() == 2
    push(cands, demo_set["ranking"], name, "curator", client=argilla_client, annotators=3)
    assert min_submitted() == 3
    # with 2 needed, a record one annotator submitted stays in the other's pending queue
    push(cands, demo_set["ranking"], name, "curator", client=argilla_client, annotators=2)
    _, key_a = make_annotator(argilla_server, argilla_client, f"a-{uuid.uuid4().hex[:6]}", "curator")
    _, key_b = make_annotator(argilla_server, argilla_client, f"b-{uuid.uuid4().hex[:6]}", "curator")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = argilla_client.datasets(name=name, workspace="curator")
        rec = next(iter(ds.records(with_suggestions=False)))
    respond(argilla_server, str(rec._server_id), key_a, "submitted", [(f"candidate_{i}", i) for i in range(1, 5)], best="cot")
    pending = httpx.post(f"{argilla_server.url}/api/v1/me/datasets/{ds.id}/records/search", params={"include": []},
                         json={"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
                                                 {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]}]}},
                         headers={"X-Argilla-Api-Key": key_b})
    assert pending.status_code == 200, pending.text
    assert str(rec._server_id) in {item["record"]["id"] for item in pending.json()["items"]}
    # a second submission completes the record: it leaves the queue
    respond(argilla_server, str(rec._server_id), key_b, "submitted", [(f"candidate_{i}", i) for i in range(1, 5)], best="cot")
    again = httpx.post(f"{argilla_server.url}/api/v1/me/datasets/{ds.id}/records/search", params={"include": []},
                       json={"filters": {"and": [{"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]}]}},
                       headers={"X-Argilla-Api-Key": key_a})
    assert str(rec._server_id) not in {item["record"]["id"] for item in again.json()["items"]}
