"""`curator align` / `select` / `rank` end to end on the tiny model, plus the combined alignment score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from curator.alignment.align import AlignConfig, align_file, combined_alignment, samples_path, score_candidates
from curator.cli.main import cli
from curator.io.data import load_candidates
from curator.model.models import load_model
from curator.model.sampling import SamplingConfig
from tests.conftest import write_jsonl

FAST = ["--model", "tiny-random", "--samples", "2", "--max-new-tokens", "8", "-q"]


def run(args: list[str]):
    return CliRunner().invoke(cli, args)


def test_combined_alignment_is_mean_z_score():
    t = pd.DataFrame({"rouge-l": [0.0, 0.5, 1.0, np.nan], "answer": [1.0, 1.0, 0.0, 0.0], "perplexity": [1.0, 2.0, 3.0, 4.0]})
    got = combined_alignment(t, ["rouge-l", "answer", "perplexity"])
    r = np.array([0.0, 0.5, 1.0])
    zr = (r - r.mean()) / r.std()
    a = np.array([1.0, 1.0, 0.0, 0.0])
    za = (a - a.mean()) / a.std()
    np.testing.assert_allclose(got, [(zr[0] + za[0]) / 2, (zr[1] + za[1]) / 2, (zr[2] + za[2]) / 2, za[3]])
    assert np.isnan(combined_alignment(t, ["perplexity"])).all()  # likelihood metrics are not alignment


def test_align_select_rank_cli_round_trip(tmp_path: Path, small_data):
    cands, evals = small_data
    out = tmp_path / "scores.parquet"
    r = run(["align", str(cands), "--out", str(out), *FAST[:-1]])
    assert r.exit_code == 0, r.output
    table = pd.read_parquet(out)
    expected = ["id", "strategy", "task", "group", "n_samples", "embedding", "hidden", "rouge-l", "token-f1", "answer", "perplexity", "sappl", "alignment"]
    assert list(table.columns) == expected
    assert len(table) == 6 and (table["perplexity"] > 1).all()
    assert samples_path(out).exists()
    assert "3 groups generated, 0 reused" in r.output
    # rerun: every sample comes from the cache, and the scores are identical
    r2 = run(["align", str(cands), "--out", str(out), *FAST[:-1]])
    assert r2.exit_code == 0 and "0 groups generated, 3 reused" in r2.output
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)

    r3 = run(["select", str(out), "--out", str(tmp_path / "sel")])
    assert r3.exit_code == 0, r3.output
    report = json.loads((tmp_path / "sel" / "report.json").read_text())
    assert report["recommended"] in ("direct", "cot") and f"recommended strategy: {report['recommended']}" in r3.output
    assert (tmp_path / "sel" / "strategies.png").read_bytes()[:4] == b"\x89PNG"

    infl = table[["id", "strategy", "task", "group"]].assign(influence_max=np.linspace(0, 1, 6), influence_mean=0.0, **{"influence:a": np.linspace(0, 1, 6)})
    infl.to_csv(tmp_path / "infl.csv", index=False)
    r4 = run(["rank", str(out), "--influence", str(tmp_path / "infl.csv"), "--out", str(tmp_path / "rank.csv"), "--w-alignment", "0"])
    assert r4.exit_code == 0, r4.output
    ranked = pd.read_csv(tmp_path / "rank.csv")
    # alignment weight 0: within each group the higher influence (later row) ranks first
    for g, sub in ranked.groupby("group"):
        top = sub.sort_values("rank").iloc[0]
        assert top["influence"] == sub["influence"].max()
        assert top["explanation"].startswith(f"ranked 1 of {len(sub)}")


def test_unknown_metric_is_usage_error(tmp_path: Path, small_data):
    cands, _ = small_data
    r = run(["align", str(cands), "--out", str(tmp_path / "s.csv"), "--metrics", "rouge-l,bleu", *FAST[:-1]])
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: unknown metric 'bleu': use one of embedding, hidden, rouge-l, token-f1, answer, perplexity, sappl"


def test_single_strategy_select_says_needs_two(tmp_path: Path):
    rows = [{"prompt": f"Q{i}?", "response": f"A{i}.", "strategy": "only", "task": "t"} for i in range(3)]
    data = write_jsonl(tmp_path / "one.jsonl", rows)
    out = tmp_path / "s.csv"
    assert run(["align", str(data), "--out", str(out), "--metrics", "rouge-l,perplexity", *FAST[:-1]]).exit_code == 0
    table = pd.read_csv(out)
    assert len(table) == 3 and table["rouge-l"].notna().all()  # single-candidate groups still get scores
    r = run(["select", str(out), "--out", str(tmp_path / "sel")])
    assert r.exit_code == 0 and "needs ≥ 2 strategies" in r.output


def test_empty_samples_are_excluded_not_zero(tmp_path: Path, small_data, monkeypatch: pytest.MonkeyPatch):
    import curator.alignment.align as align_mod

    real = align_mod.sample_outputs

    def some_empty(loaded, prompts, config, cache, progress, stats):
        out = real(loaded, prompts, config, None, progress=progress, stats=stats)
        first = next(iter(out))
        out[first] = [""] * config.k  # the model produced nothing for this group
        return out

    monkeypatch.setattr(align_mod, "sample_outputs", some_empty)
    cands, _ = small_data
    rows = load_candidates(cands)
    res = score_candidates(rows, load_model("tiny-random"), AlignConfig(model="tiny-random", metrics=("rouge-l", "perplexity"), sampling=SamplingConfig(k=2, max_new_tokens=8)))
    empty_group = rows[0].group
    sub = res.table[res.table["group"] == empty_group]
    assert (sub["n_samples"] == 0).all() and sub["rouge-l"].isna().all() and sub["alignment"].isna().all()
    assert sub["perplexity"].notna().all()  # likelihood does not need samples
    assert res.empty_samples == 2 and res.groups_without_samples == [empty_group]
    assert res.table[res.table["group"] != empty_group]["rouge-l"].notna().all()


def test_align_file_refuses_bad_output_suffix(tmp_path: Path, small_data):
    from curator.errors import InputError

    with pytest.raises(InputError, match="unsupported output type '.txt'"):
        align_file(small_data[0], tmp_path / "s.txt", AlignConfig(model="tiny-random"))
