"""Smoke tests on the real bundled SmolLM2-135M (marked slow; CI runs them)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from curator.config import IndexConfig, ProjectionConfig
from curator.io.data import load_candidates, load_eval
from curator.demo import demo_data_dir, run_demo
from curator.influence.indexing import Featurizer
from curator.gradients.projection import Projector
from tests.helpers import pairwise_cos, spearman

pytestmark = pytest.mark.slow


def test_demo_pipeline_on_smollm2(tmp_path):
    from curator.model.sampling import SamplingConfig

    r = run_demo(tmp_path / "demo", model="smollm2-135m", dim=2048, tasks=2, probes=2, sampling=SamplingConfig(k=2, max_new_tokens=48))
    assert (r.train.rows_total, r.eval.rows_total) == (16, 4)
    manifest = json.loads((tmp_path / "demo" / "train_store" / "manifest.json").read_text())
    assert manifest["model"]["spec"] == "smollm2-135m" and manifest["projection"]["input_dim"] == 921_600
    report = json.loads(r.report["json"].read_text())
    assert report["baseline"] == "direct"
    assert sorted(report["verdicts"]) == ["clarify", "cot", "evaluate"]
    for v in report["in_task"].values():
        assert v["verdict"] in ("better", "worse", "indistinguishable")
    assert r.report["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the alignment signal, on real samples from SmolLM2
    import pandas as pd

    scores = pd.read_parquet(r.scores)
    assert len(scores) == 16 and (scores["n_samples"] > 0).all()
    assert scores["embedding"].between(-1, 1).all() and (scores["perplexity"] > 1).all()
    assert r.selection is not None and r.selection["recommended"] in ("direct", "cot", "clarify", "evaluate")
    ranking = pd.read_csv(r.ranking)
    assert sorted(ranking.groupby("group")["rank"].max()) == [4, 4, 4, 4]
    assert [row["strategy"] for row in r.side_by_side] == ["direct", "clarify", "cot", "evaluate"]
    # the generate sample step: 4 prompts x 6 strategies from SmolLM2 as teacher and target
    g = r.generated
    assert g is not None and g.selected == 4 and list(g.strategies) == ["direct", "cot", "clarify", "evaluate", "reference", "own-words"]
    assert all(c.written + c.empty == 4 for c in g.strategies.values()) and g.strategies["reference"].written == 4
    sample = load_candidates(g.out)
    assert {c.group for c in sample} <= {c.group for c in load_candidates(demo_data_dir() / "candidates.jsonl")}
    assert r.sample_selection is not None and r.sample_selection["recommended"] in g.strategies
    assert r.sample_report["markdown"].exists()


def test_generate_local_backend_on_smollm2(tmp_path):
    """The local backend on the bundled model: real answers, each (prompt, strategy) once, a rerun adds nothing."""
    from curator.generation.generate import GenerateConfig, generate_file

    config = GenerateConfig(strategies=("cot", "own-words"), per_strategy=2, max_new_tokens=32, temperature=0.0)
    r = generate_file(demo_data_dir() / "prompts.jsonl", tmp_path / "c.jsonl", config)
    assert {k: c.written for k, c in r.strategies.items()} == {"cot": 2, "own-words": 2}
    rows = load_candidates(tmp_path / "c.jsonl")
    assert len({(c.group, c.strategy) for c in rows}) == 4
    assert all(len(c.response.split()) >= 3 for c in rows)  # words, not an empty or one-token answer
    assert generate_file(demo_data_dir() / "prompts.jsonl", tmp_path / "c.jsonl", config).written == 0


def test_jl_fidelity_on_smollm2_demo_gradients():
    """Spearman(projected cos, exact cos) >= 0.98 at d=8192 on real SmolLM2 gradients of demo rows."""
    feat = Featurizer(IndexConfig(model="smollm2-135m"))
    data = demo_data_dir()
    cands = load_candidates(data / "candidates.jsonl")
    rows = [c for c in cands if c.task in ("conceptual_physics", "philosophy")][:12] + load_eval(data / "eval.jsonl")[:4]  # type: ignore[operator]
    grads = feat.computer.gradients([feat.encode(r) for r in rows], "sgd")
    exact = pairwise_cos(grads.numpy().astype(np.float64))
    approx = pairwise_cos(Projector(ProjectionConfig(dim=8192), feat.computer.n_params).project(grads).numpy().astype(np.float64))
    assert exact.std() > 0.05
    assert spearman(approx, exact) >= 0.98


def test_packed_gradients_match_reference_on_smollm2():
    """The default (packed, no padding) per-example gradients of SmolLM2 against the batch-1 oracle."""
    import torch

    from curator.gradients.fastgrad import per_example_gradients
    from curator.gradients.packing import supports_packing

    feat = Featurizer(IndexConfig(model="smollm2-135m"))
    encs = [feat.encode(r) for r in load_candidates(demo_data_dir() / "candidates.jsonl")[:4]]
    assert len({len(e.input_ids) for e in encs}) > 1 and supports_packing(feat.computer.model)
    ref = feat.computer.reference_gradients(encs)
    fast = per_example_gradients(feat.computer.model, feat.computer.params, encs, batch_size=4)
    assert bool((torch.nn.functional.cosine_similarity(fast, ref, dim=1) >= 0.9999).all())


def test_cli_demo_subprocess_smollm2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "curator.cli.main", "-q", "demo", "--out", str(tmp_path / "d"), "--tasks", "1", "--probes", "2", "--dim", "1024"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr
    assert "report:" in out.stdout and (tmp_path / "d" / "study" / "report.md").exists()
    assert "Traceback" not in out.stderr
