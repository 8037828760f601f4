"""The seeded projections (sparse JL, dense Rademacher): structure, determinism across batches, JL fidelity on real gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from curator.config import GradientConfig, IndexConfig, LoraSettings, ProjectionConfig
from curator.io.data import load_candidates, load_eval
from curator.demo import demo_data_dir
from curator.model.encoding import encode
from curator.gradients.computer import GradientComputer
from curator.errors import InputError
from curator.influence.indexing import Featurizer
from curator.gradients.projection import BLOCK_ROWS, Projector, RademacherProjector, SparseProjector, normalize, sparse_block_bounds
from tests.helpers import pairwise_cos, spearman


RADEMACHER = dict(kind="rademacher")


def test_rademacher_is_deterministic_and_seeded():
    g = torch.randn(5, 3 * BLOCK_ROWS + 17)
    a = RademacherProjector(ProjectionConfig(dim=64, seed=1, **RADEMACHER), g.shape[1]).project(g)
    b = RademacherProjector(ProjectionConfig(dim=64, seed=1, **RADEMACHER), g.shape[1], cache_bytes=0).project(g)
    c = RademacherProjector(ProjectionConfig(dim=64, seed=2, **RADEMACHER), g.shape[1]).project(g)
    assert torch.equal(a, b)  # cached and regenerated blocks are the same matrix
    assert not torch.allclose(a, c)


def test_projection_is_linear_and_rademacher():
    d = 128
    proj = Projector(ProjectionConfig(dim=d, seed=0, **RADEMACHER), 300)
    assert isinstance(proj, RademacherProjector)
    R = proj.matrix()
    assert R.shape == (300, d)
    np.testing.assert_allclose(R.abs().numpy(), 1 / math.sqrt(d), rtol=1e-6)
    assert abs(float((R > 0).float().mean()) - 0.5) < 0.02
    g = torch.randn(4, 300)
    assert torch.allclose(proj.project(g), g @ R, atol=1e-5)
    # a row projected alone equals the same row projected in a batch
    assert torch.allclose(proj.project(g[2:3])[0], proj.project(g)[2], atol=1e-6)


def test_sparse_is_the_default_and_has_one_entry_per_output_block():
    d, s, n = 96, 4, 2 * BLOCK_ROWS + 5
    proj = Projector(ProjectionConfig(dim=d, seed=3), n)
    assert isinstance(proj, SparseProjector) and proj.config.nonzeros == s
    bounds = sparse_block_bounds(d, s)
    assert bounds == [0, 24, 48, 72, 96]
    for j in range(s):  # entry j of every input coordinate lies in output block j
        pos = proj.positions[j]
        assert int(pos.min()) >= bounds[j] and int(pos.max()) < bounds[j + 1]
        assert len(set(pos.tolist())) == bounds[j + 1] - bounds[j]  # every position of the block is used
    np.testing.assert_allclose(proj.weights.abs().numpy(), 1 / math.sqrt(s))
    assert abs(float((proj.weights > 0).float().mean()) - 0.5) < 0.01
    M = Projector(ProjectionConfig(dim=d, seed=3), 300).matrix()  # a small one, to compare densely
    assert torch.equal((M != 0).sum(dim=1), torch.full((300,), s))
    g = torch.randn(4, 300)
    assert torch.allclose(Projector(ProjectionConfig(dim=d, seed=3), 300).project(g), g @ M, atol=1e-5)


def test_sparse_is_seeded_and_width_independent():
    g = torch.randn(3, BLOCK_ROWS + 50)
    a = Projector(ProjectionConfig(dim=64, seed=1), g.shape[1])
    b = Projector(ProjectionConfig(dim=64, seed=1), g.shape[1])
    c = Projector(ProjectionConfig(dim=64, seed=2), g.shape[1])
    assert torch.equal(a.project(g), b.project(g))
    assert not torch.allclose(a.project(g), c.project(g))
    # coordinate i is projected the same way whatever the input width
    wider = Projector(ProjectionConfig(dim=64, seed=1), g.shape[1] + 1000)
    assert torch.equal(wider.positions[:, : g.shape[1]], a.positions)
    assert torch.equal(wider.weights[:, : g.shape[1]], a.weights)
    # another nonzeros count is another matrix
    assert not torch.allclose(Projector(ProjectionConfig(dim=64, seed=1, nonzeros=2), g.shape[1]).project(g), a.project(g))


def test_same_row_same_vector_in_a_batch_of_1_or_32():
    """The projection treats rows independently: bit-identical whatever the batch."""
    g = torch.randn(32, 5000)
    for cfg in (ProjectionConfig(dim=512), ProjectionConfig(dim=512, nonzeros=1)):
        proj = Projector(cfg, g.shape[1])
        batched = proj.project(g)
        for i in (0, 7, 31):
            assert torch.equal(proj.project(g[i : i + 1])[0], batched[i])
        assert torch.equal(proj.project(g[8:16]), batched[8:16])


def test_featurizer_vectors_do_not_depend_on_the_batch(tiny):
    """End to end (gradients, projection, normalisation): a row's vector alone vs in a batch of 32."""
    feat = Featurizer(IndexConfig(model="tiny-random", projection=ProjectionConfig(dim=1024), gradient=GradientConfig(max_length=128)), loaded=tiny)
    rows = load_candidates(demo_data_dir() / "candidates.jsonl")[:32]
    encs = [feat.encode(r) for r in rows]
    batched = feat.vectors(encs)
    for i in (0, 13, 31):
        alone = feat.vectors([encs[i]])[0]
        np.testing.assert_allclose(alone, batched[i], atol=2e-6)


def test_projection_config_rejects_bad_values():
    with pytest.raises(InputError, match="projection kind 'gaussian' is unknown: use one of sparse, rademacher"):
        ProjectionConfig(kind="gaussian")
    with pytest.raises(InputError, match="nonzeros=0 is invalid"):
        ProjectionConfig(nonzeros=0)
    with pytest.raises(InputError, match="nonzeros=9 is invalid: use an integer from 1 to dim=8"):
        ProjectionConfig(dim=8, nonzeros=9)
    assert "nonzeros" not in ProjectionConfig(kind="rademacher").to_dict()  # not part of a dense matrix's identity
    assert ProjectionConfig().to_dict() == {"dim": 8192, "seed": 0, "kind": "sparse", "nonzeros": 4}


def test_normalize_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(normalize(x), [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.parametrize("kind", ["sparse", "rademacher"])
def test_jl_fidelity_on_real_gradients(tiny, kind):
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
    projected = Projector(ProjectionConfig(dim=8192, seed=0, kind=kind), comp.n_params).project(grads)
    approx = pairwise_cos(projected.numpy().astype(np.float64))
    assert exact.std() > 0.05  # the test is meaningful: cosines spread out
    assert spearman(approx, exact) >= 0.98


def test_cli_records_the_projection_and_refuses_a_resume_with_another(tmp_path):
    import json

    from click.testing import CliRunner

    from curator.cli.main import cli

    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"What is {i}+{i}?", "response": f"It is {2 * i}.", "strategy": "direct", "task": "t"}) + "\n" for i in range(3)))
    run = CliRunner().invoke
    ok = run(cli, ["-q", "index", str(data), "--out", str(tmp_path / "s"), "--model", "tiny-random", "--dim", "64", "--projection", "rademacher"])
    assert ok.exit_code == 0, ok.output
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["projection"]["kind"] == "rademacher" and "nonzeros" not in manifest["projection"]
    again = run(cli, ["-q", "index", str(data), "--out", str(tmp_path / "s"), "--model", "tiny-random", "--dim", "64"])
    assert again.exit_code == 2
    assert "differ in projection" in again.output and '"kind": "rademacher"' in again.output and '"kind": "sparse"' in again.output
    bad = run(cli, ["-q", "index", str(data), "--out", str(tmp_path / "t"), "--model", "tiny-random", "--dim", "64", "--nonzeros", "0"])
    assert bad.exit_code == 2 and bad.output.strip().splitlines() == ["error: projection nonzeros=0 is invalid: use an integer from 1 to dim=64 (--nonzeros)"]
