"""The seeded Rademacher projection: determinism, scale, and JL fidelity on real gradients."""

from __future__ import annotations

import math

import numpy as np
import torch

from curator.config import LoraSettings, ProjectionConfig
from curator.data import load_candidates, load_eval
from curator.demo import demo_data_dir
from curator.encoding import encode
from curator.gradients import GradientComputer
from curator.projection import BLOCK_ROWS, Projector, normalize
from tests.helpers import pairwise_cos, spearman


def test_projection_is_deterministic_and_seeded():
    g = torch.randn(5, 3 * BLOCK_ROWS + 17)
    a = Projector(ProjectionConfig(dim=64, seed=1), g.shape[1]).project(g)
    b = Projector(ProjectionConfig(dim=64, seed=1), g.shape[1], cache_bytes=0).project(g)
    c = Projector(ProjectionConfig(dim=64, seed=2), g.shape[1]).project(g)
    assert torch.equal(a, b)  # cached and regenerated blocks are the same matrix
    assert not torch.allclose(a, c)


def test_projection_is_linear_and_rademacher():
    d = 128
    proj = Projector(ProjectionConfig(dim=d, seed=0), 300)
    R = proj.matrix()
    assert R.shape == (300, d)
    np.testing.assert_allclose(R.abs().numpy(), 1 / math.sqrt(d), rtol=1e-6)
    assert abs(float((R > 0).float().mean()) - 0.5) < 0.02
    g = torch.randn(4, 300)
    assert torch.allclose(proj.project(g), g @ R, atol=1e-5)
    # a row projected alone equals the same row projected in a batch
    assert torch.allclose(proj.project(g[2:3])[0], proj.project(g)[2], atol=1e-6)


def test_normalize_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(normalize(x), [[0.6, 0.8], [0.0, 0.0]])


def test_jl_fidelity_on_real_gradients(tiny):
    """Spearman(projected cosine, exact cosine) >= 0.98 at d=8192 on demo-data gradients."""
    comp = GradientComputer(tiny.model, LoraSettings())
    # warm the LoRA B matrices so that both A and B carry gradient
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in comp.params:
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    data = demo_data_dir()
    rows = load_candidates(data / "candidates.jsonl")[:32] + load_eval(data / "eval.jsonl")[:8]  # type: ignore[operator]
    encs = [encode(tiny.tokenizer, r.prompt, r.response, 256) for r in rows]
    grads = comp.gradients(encs, "sgd")
    exact = pairwise_cos(grads.numpy().astype(np.float64))
    projected = Projector(ProjectionConfig(dim=8192, seed=0), comp.n_params).project(grads)
    approx = pairwise_cos(projected.numpy().astype(np.float64))
    assert exact.std() > 0.05  # the test is meaningful: cosines spread out
    assert spearman(approx, exact) >= 0.98
