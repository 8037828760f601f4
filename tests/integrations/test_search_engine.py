"""curator's SQLite search engine, checked through the real server against brute force over the same data.

Thirty records with metadata, suggestions and vectors; two annotators answer some of them through the
per-record responses endpoint the UI uses. Every query's answer must equal the brute-force one.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pytest

from curator.integrations.argilla.server import ServerInfo

pytestmark = pytest.mark.argilla

N, DIM = 30, 32
VOCAB = ["zebra", "apple", "river", "cloud", "stone"]
TASKS = ["algebra", "geometry", "logic"]
TAGS = ["easy", "hard", "long", "short"]
CANDIDATES = ["candidate_0", "candidate_1"]


@dataclass
class World:
    """What was sent to the server, kept in Python for the brute-force side."""

    dataset_id: str
    records: Dict[str, dict]  # external id -> fields, metadata, vector, suggestion
    server_ids: Dict[str, str]
    users: Dict[str, dict]  # username -> {"id", "api_key"}
    responses: Dict[str, Dict[str, dict]] = field(default_factory=dict)  # username -> external id -> response


def _make_records() -> Dict[str, dict]:
    rng = random.Random(11)
    out = {}
    for i in range(N):
        words = rng.sample(VOCAB, 2)
        out[f"r{i:02d}"] = {
            "fields": {
                "prompt": f"Problem {i}: the {words[0]} and the {words[1]}",
                "candidate_0": f"Answer {i}",
                "candidate_1": f"Steps then {i}",
            },
            "metadata": {
                "score": round(rng.random(), 4),
                "task": TASKS[i % 3],
                "tags": rng.sample(TAGS, rng.randint(1, 2)),
                "length": rng.randint(5, 50),
            },
            "vector": [rng.gauss(0, 1) for _ in range(DIM)],
            "best": {"value": rng.choice(["direct", "cot"]), "score": round(rng.random(), 4)},
        }
    return out


# which annotator answers which record, and how (status, best_strategy); the rest stays pending for them
PLAN = {
    "annotator-1": {
        **{f"r{i:02d}": "submitted" for i in range(0, 12)},
        "r12": "draft",
        "r13": "draft",
        "r14": "discarded",
        "r15": "discarded",
    },
    "annotator-2": {**{f"r{i:02d}": "submitted" for i in [5, 6, 7, 8, 9, 20, 21, 22, 23, 24]}, "r25": "draft"},
}


def _response_body(status: str, i: int) -> dict:
    # a discarded response carries values too: the SDK 2.8.0 cannot read one without (values=None)
    ranking = [{"value": c, "rank": r + 1} for r, c in enumerate(CANDIDATES if i % 2 else reversed(CANDIDATES))]
    return {
        "status": status,
        "values": {"ranking": {"value": ranking}, "best_strategy": {"value": "cot" if i % 3 else "direct"}},
    }


@pytest.fixture(scope="module")
def world(argilla_server: ServerInfo) -> World:
    import argilla as rg
    import httpx

    owner = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)
    workspace = (
        owner.workspaces("curator-search-tests") or rg.Workspace(name="curator-search-tests", client=owner).create()
    )
    settings = rg.Settings(
        fields=[rg.TextField(name="prompt"), *[rg.TextField(name=c) for c in CANDIDATES]],
        questions=[
            rg.RankingQuestion(name="ranking", values=CANDIDATES),
            rg.LabelQuestion(name="best_strategy", labels=["direct", "cot"]),
        ],
        metadata=[
            rg.FloatMetadataProperty(name="score"),
            rg.TermsMetadataProperty(name="task"),
            rg.TermsMetadataProperty(name="tags"),
            rg.IntegerMetadataProperty(name="length"),
        ],
        vectors=[rg.VectorField(name="gradient", dimensions=DIM)],
    )
    dataset = rg.Dataset(name="search-engine", workspace=workspace, settings=settings, client=owner).create()
    records = _make_records()
    dataset.records.log(
        [
            rg.Record(
                id=rid,
                fields=r["fields"],
                metadata=r["metadata"],
                vectors={"gradient": r["vector"]},
                suggestions=[
                    rg.Suggestion("best_strategy", r["best"]["value"], score=r["best"]["score"], agent="curator/test"),
                    rg.Suggestion("ranking", list(reversed(CANDIDATES)), score=[0.7, 0.3], agent="curator/test"),
                ],
            )
            for rid, r in records.items()
        ]
    )
    server_ids = {r.id: str(r._server_id) for r in dataset.records}
    w = World(dataset_id=str(dataset.id), records=records, server_ids=server_ids, users={})
    with httpx.Client(base_url=argilla_server.url, headers={"X-Argilla-Api-Key": argilla_server.api_key}) as http:
        for username in PLAN:
            user = rg.User(username=username, password="annotator-pass", role="annotator", client=owner).create()
            workspace.add_user(user)
            key = http.get(f"/api/v1/users/{user.id}").raise_for_status().json()["api_key"]
            w.users[username] = {"id": str(user.id), "api_key": key}
    for username, answers in PLAN.items():
        with httpx.Client(
            base_url=argilla_server.url, headers={"X-Argilla-Api-Key": w.users[username]["api_key"]}
        ) as http:
            for rid, status in answers.items():
                body = _response_body(status, int(rid[1:]))
                http.post(f"/api/v1/records/{server_ids[rid]}/responses", json=body).raise_for_status()
                w.responses.setdefault(username, {})[rid] = body
    return w


# ------------------------------------------------------------------------------------------ helpers
def _terms(scope: dict, values: list) -> dict:
    return {"type": "terms", "scope": scope, "values": values}


def _search(
    info: ServerInfo,
    w: World,
    body: dict,
    api_key: Optional[str] = None,
    me: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> List[str]:
    import httpx

    path = f"/api/v1/{'me/' if me else ''}datasets/{w.dataset_id}/records/search"
    with httpx.Client(base_url=info.url, headers={"X-Argilla-Api-Key": api_key or info.api_key}) as http:
        result = http.post(path, params={"limit": limit, "offset": offset}, json=body).raise_for_status().json()
    ids = [item["record"]["external_id"] for item in result["items"]]
    assert result["total"] >= len(ids)
    return ids


def _sdk_ids(client, w: World, query) -> List[str]:
    dataset = client.datasets(name="search-engine", workspace="curator-search-tests")
    return [r.id for r in dataset.records(query=query)]


def _record_status(w: World, rid: str) -> str:
    submitted = sum(1 for answers in w.responses.values() if answers.get(rid, {}).get("status") == "submitted")
    return "completed" if submitted >= 1 else "pending"  # the default distribution: min_submitted = 1


def _words(text: str) -> set:
    return set(re.findall(r"\w+", text.lower()))


def _cosine(a: List[float], b: List[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# -------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("username", list(PLAN))
def test_annotator_pending_queue(argilla_server: ServerInfo, world: World, username: str):
    key = world.users[username]["api_key"]
    mine = world.responses[username]
    status_scope = {"entity": "response", "property": "status"}
    for statuses in (["pending"], ["draft"], ["submitted"], ["discarded"], ["pending", "draft"]):
        got = _search(
            argilla_server, world, {"filters": {"and": [_terms(status_scope, statuses)]}}, api_key=key, me=True
        )
        expected = {rid for rid in world.records if (mine[rid]["status"] if rid in mine else "pending") in statuses}
        assert sorted(got) == sorted(expected), statuses
    # the UI's queue: pending for this annotator and not yet completed by the team
    queue = {
        "and": [_terms(status_scope, ["pending"]), _terms({"entity": "record", "property": "status"}, ["pending"])]
    }
    got = _search(argilla_server, world, {"filters": queue}, api_key=key, me=True)
    assert sorted(got) == sorted(
        rid for rid in world.records if rid not in mine and _record_status(world, rid) == "pending"
    )
    # the order is stable for one annotator (the server pages through it)
    pages = [
        _search(
            argilla_server,
            world,
            {"filters": {"and": [_terms(status_scope, ["pending"])]}},
            api_key=key,
            me=True,
            limit=7,
            offset=o,
        )
        for o in range(0, 30, 7)
    ]
    assert sum(pages, []) == _search(
        argilla_server, world, {"filters": {"and": [_terms(status_scope, ["pending"])]}}, api_key=key, me=True
    )


def test_owner_pending_means_no_response_at_all(argilla_client, world: World):
    import argilla as rg

    got = _sdk_ids(argilla_client, world, rg.Query(filter=rg.Filter(("response.status", "==", "pending"))))
    answered = {rid for answers in world.responses.values() for rid in answers}
    assert sorted(got) == sorted(set(world.records) - answered)


def test_metadata_filters(argilla_client, world: World):
    import argilla as rg

    md = {rid: r["metadata"] for rid, r in world.records.items()}
    cases = [
        (("metadata.task", "==", "logic"), lambda m: m["task"] == "logic"),
        (("metadata.task", "in", ["algebra", "logic"]), lambda m: m["task"] in ("algebra", "logic")),
        (("metadata.tags", "in", ["hard"]), lambda m: "hard" in m["tags"]),
        (("metadata.score", ">=", 0.4), lambda m: m["score"] >= 0.4),
        (("metadata.length", "<=", 20), lambda m: m["length"] <= 20),
    ]
    for condition, keep in cases:
        got = _sdk_ids(argilla_client, world, rg.Query(filter=rg.Filter(condition)))
        assert sorted(got) == sorted(rid for rid, m in md.items() if keep(m)), condition
    both = [
        ("metadata.score", ">=", 0.2),
        ("metadata.score", "<=", 0.8),
        ("metadata.task", "in", ["geometry", "logic"]),
    ]
    got = _sdk_ids(argilla_client, world, rg.Query(filter=rg.Filter(both)))
    assert sorted(got) == sorted(rid for rid, m in md.items() if 0.2 <= m["score"] <= 0.8 and m["task"] != "algebra")


def test_sorting_and_paging(argilla_server: ServerInfo, world: World):
    md = {rid: r["metadata"] for rid, r in world.records.items()}
    by_score = {"sort": [{"scope": {"entity": "metadata", "metadata_property": "score"}, "order": "desc"}]}
    assert _search(argilla_server, world, by_score) == sorted(md, key=lambda rid: -md[rid]["score"])
    two_keys = {"sort": [{"scope": {"entity": "metadata", "metadata_property": "task"}, "order": "asc"},
                         {"scope": {"entity": "metadata", "metadata_property": "length"}, "order": "desc"}]}  # fmt: skip
    expected = sorted(md, key=lambda rid: (md[rid]["task"], -md[rid]["length"], rid))
    got = _search(argilla_server, world, two_keys)
    assert [(md[r]["task"], md[r]["length"]) for r in got] == [(md[r]["task"], md[r]["length"]) for r in expected]
    filtered = {
        **by_score,
        "filters": {"and": [_terms({"entity": "metadata", "metadata_property": "task"}, ["logic"])]},
    }
    pages = [_search(argilla_server, world, filtered, limit=4, offset=o) for o in (0, 4, 8)]
    assert sum(pages, []) == sorted((r for r in md if md[r]["task"] == "logic"), key=lambda rid: -md[rid]["score"])


def test_suggestion_and_response_filters(argilla_client, world: World):
    import argilla as rg

    best = {rid: r["best"] for rid, r in world.records.items()}
    got = _sdk_ids(argilla_client, world, rg.Query(filter=rg.Filter(("best_strategy.suggestion", "==", "cot"))))
    assert sorted(got) == sorted(rid for rid, b in best.items() if b["value"] == "cot")
    got = _sdk_ids(argilla_client, world, rg.Query(filter=rg.Filter(("best_strategy.score", ">=", 0.5))))
    assert sorted(got) == sorted(rid for rid, b in best.items() if b["score"] >= 0.5)
    got = _sdk_ids(argilla_client, world, rg.Query(filter=rg.Filter(("best_strategy.response", "==", "direct"))))
    expected = {rid for answers in world.responses.values() for rid, body in answers.items()
                if body.get("values", {}).get("best_strategy", {}).get("value") == "direct"}  # fmt: skip
    assert sorted(got) == sorted(expected)
    got = _sdk_ids(argilla_client, world, rg.Query(filter=rg.Filter(("status", "==", "completed"))))
    assert sorted(got) == sorted(rid for rid in world.records if _record_status(world, rid) == "completed")


def _search_scored(info: ServerInfo, w: World, body: dict, api_key: Optional[str] = None, me: bool = False) -> list:
    """(external id, query_score) of every hit, in the server's order."""
    import httpx

    path = f"/api/v1/{'me/' if me else ''}datasets/{w.dataset_id}/records/search"
    with httpx.Client(base_url=info.url, headers={"X-Argilla-Api-Key": api_key or info.api_key}) as http:
        result = http.post(path, params={"limit": 100}, json=body).raise_for_status().json()
    assert result["total"] == len(result["items"])
    return [(item["record"]["external_id"], item["query_score"]) for item in result["items"]]


# brute force for the text search: a predicate over {field name: its lower-cased words}
def _has(*words: str):
    return lambda fs: any(set(words) <= set(tokens) for tokens in fs.values())


def _phrase(*words: str):
    n = len(words)
    return lambda fs: any(tuple(t[k : k + n]) == words for t in fs.values() for k in range(len(t)))


def _prefix(p: str):
    return lambda fs: any(t.startswith(p) for tokens in fs.values() for t in tokens)


def _and(*ps):
    return lambda fs: all(p(fs) for p in ps)


def _or(*ps):
    return lambda fs: any(p(fs) for p in ps)


def _not(p):
    return lambda fs: not p(fs)


# simple_query_string with default_operator AND, as argilla-server's Elasticsearch engine sends it
TEXT_CASES = [
    ("zebra", _has("zebra")),
    ("ZEBRA apple", _and(_has("zebra"), _has("apple"))),
    ("zebra + apple", _and(_has("zebra"), _has("apple"))),
    ("zebra | apple", _or(_has("zebra"), _has("apple"))),
    ("-zebra", _not(_has("zebra"))),
    ("problem -zebra -apple", _and(_has("problem"), _not(_has("zebra")), _not(_has("apple")))),
    ('"the zebra"', _phrase("the", "zebra")),
    ('"zebra and the"', _phrase("zebra", "and", "the")),
    ('"zebra answer" | "stone steps"', _or(_phrase("zebra", "answer"), _phrase("stone", "steps"))),  # per field
    ('"answer 3" | "then 4"', _or(_phrase("answer", "3"), _phrase("then", "4"))),
    ("zeb*", _prefix("zeb")),
    ("1*", _prefix("1")),
    ("(zebra | apple) -river", _and(_or(_has("zebra"), _has("apple")), _not(_has("river")))),
    ("-(zebra | apple)", _not(_or(_has("zebra"), _has("apple")))),
    ("zebra | apple river", _and(_or(_has("zebra"), _has("apple")), _has("river"))),  # left to right
    ("zebra river | apple", _or(_and(_has("zebra"), _has("river")), _has("apple"))),
    ('(zebra | (apple -cloud)) "the stone"', _and(_or(_has("zebra"), _and(_has("apple"), _not(_has("cloud")))),
                                                  _phrase("the", "stone"))),  # fmt: skip
    ("answer | steps", _or(_has("answer"), _has("steps"))),
    ('"zebra', _has("zebra")),  # lenient: an unclosed quote or parenthesis is ignored, a stray one too
    ("(zebra | apple", _or(_has("zebra"), _has("apple"))),
    ("zebra)", _has("zebra")),
    ("*", lambda fs: True),
    ("", lambda fs: False),  # no operand: nothing, as Elasticsearch's simple_query_string
]


def test_text_search(argilla_server: ServerInfo, argilla_client, world: World):
    import argilla as rg

    pair = " ".join(w for w in VOCAB if w in _words(world.records["r00"]["fields"]["prompt"]))
    for q in ("zebra", pair, "ZEBRA", "problem"):
        got = _sdk_ids(argilla_client, world, rg.Query(query=q))
        want = _words(q)
        expected = [rid for rid, r in world.records.items() if want <= _words(" ".join(r["fields"].values()))]
        assert expected and sorted(got) == sorted(expected), q

    for field in (None, "prompt", "candidate_0"):
        for q, keep in TEXT_CASES:
            text = {"q": q, **({"field": field} if field else {})}
            hits = _search_scored(argilla_server, world, {"query": {"text": text}})
            words = {
                rid: {name: re.findall(r"\w+", v.lower()) for name, v in r["fields"].items() if field in (None, name)}
                for rid, r in world.records.items()
            }
            expected = [rid for rid, fields in words.items() if keep(fields)]
            assert sorted(rid for rid, _ in hits) == sorted(expected), (q, field)
            scores = [score for _, score in hits]
            assert all(score > 0 for score in scores) and scores == sorted(scores, reverse=True), (q, field)


def test_scores_without_a_text_query(argilla_server: ServerInfo, world: World):
    hits = _search_scored(argilla_server, world, {})
    assert len(hits) == N and all(score == 1.0 for _, score in hits)  # Elasticsearch's match_all
    filtered = {"filters": {"and": [_terms({"entity": "metadata", "metadata_property": "task"}, ["logic"])]}}
    assert {score for _, score in _search_scored(argilla_server, world, filtered)} == {1.0}
    by_score = {"sort": [{"scope": {"entity": "metadata", "metadata_property": "score"}, "order": "desc"}]}
    assert {score for _, score in _search_scored(argilla_server, world, by_score)} == {None}  # sorted: no _score
    # an annotator's queue: Elasticsearch's function_score, the score times a seeded random_score
    key = world.users["annotator-1"]["api_key"]
    mine = _search_scored(argilla_server, world, {}, api_key=key, me=True)
    scores = [score for _, score in mine]
    assert len(mine) == N and all(0 <= s < 1 for s in scores) and scores == sorted(scores, reverse=True)
    assert _search_scored(argilla_server, world, {}, api_key=key, me=True) == mine


def test_similarity_ranking(argilla_client, world: World):
    import argilla as rg

    dataset = argilla_client.datasets(name="search-engine", workspace="curator-search-tests")
    vectors = {rid: r["vector"] for rid, r in world.records.items()}
    probe = [math.sin(k) for k in range(DIM)]
    hits = list(dataset.records(query=rg.Query(similar=rg.Similar(name="gradient", value=probe))))
    expected = sorted(vectors, key=lambda rid: -_cosine(vectors[rid], probe))
    assert [r.id for r, _ in hits] == expected
    for record, score in hits:
        assert score == pytest.approx((1 + _cosine(vectors[record.id], probe)) / 2, abs=1e-6)

    least = list(dataset.records(query=rg.Query(similar=rg.Similar(name="gradient", value=probe, most_similar=False))))
    assert [r.id for r, _ in least] == expected[::-1]

    anchor = next(r for r in dataset.records if r.id == "r03")
    near = list(dataset.records(query=rg.Query(similar=rg.Similar(name="gradient", value=anchor))))
    assert [r.id for r, _ in near] == sorted(
        (r for r in vectors if r != "r03"), key=lambda rid: -_cosine(vectors[rid], vectors["r03"])
    )

    query = rg.Query(
        similar=rg.Similar(name="gradient", value=probe), filter=rg.Filter(("metadata.task", "==", "algebra"))
    )
    got = [r.id for r, _ in dataset.records(query=query)]
    assert got == [rid for rid in expected if world.records[rid]["metadata"]["task"] == "algebra"]


def test_progress_counts(argilla_server: ServerInfo, argilla_client, world: World):
    import httpx

    dataset = argilla_client.datasets(name="search-engine", workspace="curator-search-tests")
    progress = dataset.progress()
    completed = sum(1 for rid in world.records if _record_status(world, rid) == "completed")
    assert (progress["total"], progress["completed"], progress["pending"]) == (N, completed, N - completed)
    for username, answers in world.responses.items():
        with httpx.Client(
            base_url=argilla_server.url, headers={"X-Argilla-Api-Key": world.users[username]["api_key"]}
        ) as http:
            metrics = http.get(f"/api/v1/me/datasets/{world.dataset_id}/metrics").raise_for_status().json()["responses"]
        counts = {s: sum(1 for b in answers.values() if b["status"] == s) for s in ("submitted", "draft", "discarded")}
        assert metrics == {"total": N, **counts, "pending": N - sum(counts.values())}, username


def test_metadata_metrics(argilla_server: ServerInfo, world: World):
    import httpx

    md = [r["metadata"] for r in world.records.values()]
    with httpx.Client(base_url=argilla_server.url, headers={"X-Argilla-Api-Key": argilla_server.api_key}) as http:
        props = (
            http.get(f"/api/v1/me/datasets/{world.dataset_id}/metadata-properties").raise_for_status().json()["items"]
        )
        metrics = {
            p["name"]: http.get(f"/api/v1/metadata-properties/{p['id']}/metrics").raise_for_status().json()
            for p in props
        }
    assert metrics["score"]["min"] == pytest.approx(min(m["score"] for m in md))
    assert metrics["score"]["max"] == pytest.approx(max(m["score"] for m in md))
    assert (metrics["length"]["min"], metrics["length"]["max"]) == (
        min(m["length"] for m in md),
        max(m["length"] for m in md),
    )
    tags = [t for m in md for t in m["tags"]]
    assert metrics["tags"]["total"] == len(tags)
    assert {v["term"]: v["count"] for v in metrics["tags"]["values"]} == {t: tags.count(t) for t in set(tags)}
