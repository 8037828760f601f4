"""Influence scoring: FAISS centroid search equals brute force; planted duplicates rank first; checkpoints combine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curator.config import GradientConfig, IndexConfig, ProjectionConfig
from curator.errors import InputError, MismatchError
from curator.influence.indexing import Featurizer, index_file
from curator.influence.scoring import INFLUENCE_PREFIX, influence_scores, open_space, task_centroids, top_k
from curator.model.models import load_model
from curator.store.store import GradientStore
from curator.gradients.warmup import WarmupConfig, warmup
from tests.conftest import write_jsonl


def cfg(**kw) -> IndexConfig:
    return IndexConfig(model="tiny-random", projection=ProjectionConfig(dim=kw.pop("dim", 128)), gradient=GradientConfig(max_length=128, **kw), batch_size=4)


@pytest.fixture
def stores(tmp_path, small_data):
    cands, evals = small_data
    index_file(cands, tmp_path / "train", cfg())
    index_file(evals, tmp_path / "eval", cfg())
    return tmp_path / "train", tmp_path / "eval"


def test_centroid_search_equals_brute_force(stores):
    train, ev = stores
    table = influence_scores(open_space([train], [ev]))
    x = GradientStore.open(train).vectors().astype(np.float64)
    e = GradientStore.open(ev).vectors().astype(np.float64)
    e_tasks = GradientStore.open(ev).rows()["task"].to_numpy()
    brute = {t: (x @ e[e_tasks == t].T).mean(axis=1) for t in ("a", "b")}
    for t in ("a", "b"):
        np.testing.assert_allclose(table[f"{INFLUENCE_PREFIX}{t}"], brute[t], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table["influence_max"], np.maximum(brute["a"], brute["b"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table["influence_mean"], (brute["a"] + brute["b"]) / 2, rtol=1e-5, atol=1e-6)
    assert list(table["id"]) == GradientStore.open(train).ids()
    assert list(table.columns[:4]) == ["id", "strategy", "task", "group"]


def test_planted_duplicate_of_eval_item_ranks_first(tmp_path):
    loaded = load_model("tiny-random")
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    cands = []
    for i in range(12):
        q = " ".join(rng.choice(words, 6)) + "?"
        for s in ("direct", "cot"):
            cands.append({"id": f"c{i}-{s}", "prompt": q, "response": " ".join(rng.choice(words, 5 if s == "direct" else 12)), "strategy": s, "task": "t", "group": f"c{i}"})
    target = {"id": "e-target", "prompt": "What is the capital of France?", "response": "Paris is the capital of France.", "task": "t"}
    cands.append({"id": "planted", "prompt": target["prompt"], "response": target["response"], "strategy": "copy", "task": "t", "group": "planted"})
    evals = [target, {"id": "e-other", "prompt": "Name a prime number.", "response": "Seven is prime.", "task": "t"}]
    write_jsonl(tmp_path / "c.jsonl", cands)
    write_jsonl(tmp_path / "e.jsonl", evals)
    config = cfg(dim=512)
    feat = Featurizer(config, loaded)
    index_file(tmp_path / "c.jsonl", tmp_path / "train", config, featurizer=feat)
    index_file(tmp_path / "e.jsonl", tmp_path / "eval", config, featurizer=feat)
    top = top_k(open_space([tmp_path / "train"], [tmp_path / "eval"]), 3)
    first = top[(top["eval_id"] == "e-target") & (top["rank"] == 1)].iloc[0]
    assert first["id"] == "planted"
    assert first["score"] == pytest.approx(1.0, abs=2e-3)
    assert len(top) == 6 and list(top[top["eval_id"] == "e-target"]["rank"]) == [1, 2, 3]


def test_multi_checkpoint_is_lr_weighted_sum(tmp_path, small_data):
    cands, evals = small_data
    ckpts = warmup(cands, tmp_path / "wu", model="tiny-random", config=WarmupConfig(epochs=2, lr=5e-3, batch_size=2, max_length=128))
    lrs = [json.loads((c / "checkpoint.json").read_text())["lr"] for c in ckpts]
    assert lrs[0] != lrs[1]
    trains, evs = [], []
    for c in ckpts:
        index_file(cands, tmp_path / f"t-{c.name}", cfg(kind="adam", checkpoint=str(c)))
        index_file(evals, tmp_path / f"e-{c.name}", cfg(kind="sgd", checkpoint=str(c)))
        trains.append(tmp_path / f"t-{c.name}")
        evs.append(tmp_path / f"e-{c.name}")
    combined = influence_scores(open_space(trains, list(reversed(evs))))  # pairing is by checkpoint, not order
    singles = [influence_scores(open_space([t], [e])) for t, e in zip(trains, evs)]
    w = np.array(lrs) / sum(lrs)
    for col in ("influence:a", "influence:b"):
        expected = w[0] * singles[0][col].to_numpy() + w[1] * singles[1][col].to_numpy()
        np.testing.assert_allclose(combined[col], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(singles[0]["influence:a"], singles[1]["influence:a"])


def test_mismatched_stores_are_refused(tmp_path, small_data):
    cands, evals = small_data
    index_file(cands, tmp_path / "train", cfg(dim=64))
    index_file(evals, tmp_path / "eval", cfg(dim=128))
    with pytest.raises(MismatchError) as err:
        open_space([tmp_path / "train"], [tmp_path / "eval"])
    msg = str(err.value)
    assert "projection" in msg and '"dim": 64' in msg and '"dim": 128' in msg
    with pytest.raises(InputError, match="store of eval rows was passed to --train"):
        open_space([tmp_path / "eval"], [tmp_path / "eval"])


def test_checkpoint_mismatch_is_refused(tmp_path, small_data):
    cands, evals = small_data
    ckpts = warmup(cands, tmp_path / "wu", model="tiny-random", config=WarmupConfig(epochs=1, lr=1e-3, batch_size=2, max_length=128))
    index_file(cands, tmp_path / "train", cfg(kind="adam", checkpoint=str(ckpts[0])))
    index_file(evals, tmp_path / "eval", cfg())
    with pytest.raises(MismatchError, match="gradient.checkpoint"):
        open_space([tmp_path / "train"], [tmp_path / "eval"])


def test_task_centroids_are_means(stores):
    train, ev = stores
    space = open_space([train], [ev])
    tasks, cents = task_centroids(space)
    assert tasks == ["a", "b"]
    np.testing.assert_allclose(cents[0], space.eval_vectors[:2].mean(axis=0), rtol=1e-6)
