"""`curator validate`: real LoRA runs on a planted dataset, Spearman/top-1 on hand-made tables, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from curator.cli.main import cli
from curator.io.data import load_eval
from curator.model.encoding import encode
from curator.errors import InputError, MismatchError
from curator.validation.finetune import EvalConfig, FinetuneConfig, batch_loss, evaluate
from curator.model.models import LoadedModel, load_model
from curator.validation.run import ValidateConfig, run_validate
from curator.validation.predictors import IN_TASK, PredictConfig, predictor_table, read_reports
from curator.validation.report import average_ranks, compare, spearman, top1

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa(a: int, b: int) -> tuple[str, str]:
    return f"What is {a} + {b}?", f"The answer is {a + b}."


# --------------------------------------------------------------------------- Spearman and top-1 on hand-made tables


def test_average_ranks_share_tied_ranks() -> None:
    assert average_ranks({"a": 1.0, "b": 1.0, "c": 0.0, "d": 2.0}) == {"d": 1.0, "a": 2.5, "b": 2.5, "c": 4.0}
    assert average_ranks({"a": 5.0, "b": 1.0, "c": 1.0}, higher_is_better=False) == {"b": 1.5, "c": 1.5, "a": 3.0}


def test_spearman_hand_tables() -> None:
    measured = {"a": 0.4, "b": 0.3, "c": 0.1, "d": 0.2}
    assert spearman({"a": 4, "b": 3, "c": 1, "d": 2}, measured) == (pytest.approx(1.0), None)
    assert spearman({"a": 1, "b": 2, "c": 4, "d": 3}, measured) == (pytest.approx(-1.0), None)
    # lower-is-better predictor (perplexity): the smallest value is its best
    assert spearman({"a": 1.1, "b": 2.0, "c": 9.0, "d": 3.0}, measured, higher_is_better=False) == (pytest.approx(1.0), None)
    # ties: predicted ranks d=1, a=b=2.5, c=4; measured a=1, b=2, d=3, c=4; by hand rho = 1.5 / sqrt(4.5 * 5) = 1/sqrt(10)
    rho, note = spearman({"a": 1, "b": 1, "c": 0, "d": 2}, {"a": 4, "b": 3, "c": 1, "d": 2})
    assert note is None and rho == pytest.approx(10 ** -0.5)
    # only strategies with both values count
    assert spearman({"a": 3, "b": 2, "c": 1, "x": 9}, {"a": 3, "b": 2, "c": 1, "d": 0}) == (pytest.approx(1.0), None)


def test_spearman_is_not_reported_when_degenerate() -> None:
    rho, note = spearman({"a": 1, "b": 2}, {"a": 1, "b": 2})
    assert rho is None and "at least 3 strategies" in note and "has 2" in note
    rho, note = spearman({"a": 1}, {"a": 1})
    assert rho is None and "has 1" in note
    rho, note = spearman({"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 2, "c": 3})
    assert rho is None and "same score" in note
    rho, note = spearman({"a": 1, "b": 2, "c": 3}, {"a": 0.5, "b": 0.5, "c": 0.5})
    assert rho is None and "same gain" in note


def test_top1_hit_miss_tie_and_direction() -> None:
    measured = {"a": 0.1, "b": 0.5, "c": 0.2}
    assert top1({"a": 1, "b": 3, "c": 2}, measured) == {"predicted": ["b"], "measured": ["b"], "hit": True, "tied": False}
    assert top1({"a": 3, "b": 1, "c": 2}, measured) == {"predicted": ["a"], "measured": ["b"], "hit": False, "tied": False}
    assert top1({"a": 3, "b": 3, "c": 2}, measured) == {"predicted": ["a", "b"], "measured": ["b"], "hit": True, "tied": True}
    assert top1({"a": 9.0, "b": 1.5, "c": 2.0}, measured, higher_is_better=False)["predicted"] == ["b"]
    assert top1({"a": None, "b": None, "c": None}, measured)["hit"] is None
    assert top1({"a": 2, "b": 2, "c": 2}, measured) == {"predicted": ["a", "b", "c"], "measured": ["b"], "hit": None, "tied": True}  # picked nothing


def test_compare_tables_per_predictor_and_measure() -> None:
    predictors = {
        "good": {"source": "s", "direction": "higher", "meaning": "m", "values": {"a": 0.9, "b": 0.5, "c": 0.1}},
        "perplexity": {"source": "s", "direction": "lower", "meaning": "m", "values": {"a": 9.0, "b": 5.0, "c": 1.0}},
        "empty": {"source": "s", "direction": "higher", "meaning": "m", "values": {"a": None, "b": None, "c": None}},
    }
    gains = {"loss": {"a": 0.3, "b": 0.2, "c": 0.1}, "accuracy": {"a": 0.0, "b": 0.25, "c": 0.5}}
    out = compare(predictors, gains)
    assert out["good"]["ranking"] == ["a", "b", "c"]
    assert out["good"]["against"]["loss"]["spearman"] == pytest.approx(1.0)
    assert out["good"]["against"]["accuracy"]["spearman"] == pytest.approx(-1.0)
    assert out["perplexity"]["ranking"] == ["c", "b", "a"]
    assert out["perplexity"]["against"]["loss"]["spearman"] == pytest.approx(-1.0)
    assert out["perplexity"]["against"]["loss"]["top1"]["hit"] is False
    assert out["empty"]["against"]["loss"]["spearman"] is None and "no values" in out["empty"]["against"]["loss"]["note"]


# --------------------------------------------------------------------------- the planted dataset, trained for real


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny models run as fast on one thread, and a busy 2-core box makes 2-thread tiny ops crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny model pre-trained on "What is a + b?" → "The answer is N." (so its own samples mean something),
    and candidates where `copy` repeats the eval responses, `noise` is random characters and `other` rewords them."""
    root = tmp_path_factory.mktemp("planted")
    loaded = load_model("tiny-random")
    rng = random.Random(0)
    corpus = [encode(loaded.tokenizer, *qa(rng.randint(0, 50), rng.randint(0, 50)), 128) for _ in range(400)]
    torch.manual_seed(0)
    opt = torch.optim.Adam(loaded.model.parameters(), lr=1e-2)
    loaded.model.train()
    for _ in range(40):
        opt.zero_grad()
        batch_loss(loaded.model, rng.sample(corpus, 16), loaded.tokenizer.pad_token_id).backward()
        opt.step()
    loaded.model.eval()
    model_dir = root / "model"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    cands, evals = [], []
    for i in range(8):
        task = "low" if i < 4 else "high"
        a, b = 60 + 3 * i, 70 + 5 * i
        prompt, response = qa(a, b)
        evals.append({"id": f"e{i}", "prompt": prompt, "response": response, "task": task})
        noise = "".join(rng.choice("qwxzjkvbp#@%&*~^") for _ in range(18))
        cands += [
            {"id": f"c{i}", "prompt": prompt, "response": response, "strategy": "copy", "task": task, "group": f"g{i}"},
            {"id": f"n{i}", "prompt": prompt, "response": noise, "strategy": "noise", "task": task, "group": f"g{i}"},
            {"id": f"o{i}", "prompt": prompt, "response": f"{a} plus {b} makes {a + b}.", "strategy": "other", "task": task, "group": f"g{i}"},
        ]
    data = {"model": str(model_dir), "cands": write_jsonl(root / "cands.jsonl", cands), "eval": write_jsonl(root / "eval.jsonl", evals)}
    config = planted_config(data["model"])
    events: list[tuple[str, int, int]] = []
    result = run_validate(data["cands"], data["eval"], root / "out", config, progress=lambda s, d, t: events.append((s, d, t)))
    return {**data, "root": root, "result": result, "events": events, "config": config}


def planted_config(model: str, **kw: Any) -> ValidateConfig:
    return ValidateConfig(
        model=model,
        train=FinetuneConfig(steps=8, lr=5e-3, batch_size=4, max_length=128),
        evaluation=EvalConfig(max_new_tokens=12, max_length=128),
        prediction=PredictConfig(metrics=("hidden", "rouge-l", "token-f1", "answer", "perplexity", "sappl"), samples=2, max_new_tokens=12, dim=256, max_length=128),
        **kw,
    )


def test_planted_measured_ranking_puts_copy_first(planted: dict[str, Any]) -> None:
    rep = planted["result"].report
    assert rep["measured_ranking"][0] == "copy"
    gain = {s: rep["measured"][s]["loss_gain"]["mean"] for s in rep["strategies"]}
    assert gain["copy"] > 0 > gain["noise"], gain  # copying the eval set lowers its loss; noise raises it
    assert gain["copy"] > gain["other"] > gain["noise"]
    assert rep["best_adapter"] == "runs/copy/seed-0/adapter"
    for s in rep["strategies"]:  # real training: the loss on the strategy's own data went down
        metrics = json.loads((planted["root"] / "out" / "runs" / s / "seed-0" / "metrics.json").read_text())
        assert metrics["train_loss_last"] < metrics["train_loss_first"], s
        assert len(metrics["example_ids"]) == 8 and metrics["examples_seen"] == 32
    assert sorted(planted["result"].trained) == [("copy", 0), ("noise", 0), ("other", 0)]


def test_planted_influence_and_alignment_rank_copy_first(planted: dict[str, Any]) -> None:
    predictors = planted["result"].report["predictors"]
    for name in (IN_TASK, "influence cross-task", "alignment", "perplexity", "sappl"):
        against = predictors[name]["against"]["loss"]
        assert predictors[name]["ranking"][0] == "copy", (name, predictors[name]["ranking"])
        assert against["top1"] == {"predicted": ["copy"], "measured": ["copy"], "hit": True, "tied": False}, name
        assert against["spearman"] is not None and against["spearman"] > 0, name


def test_report_files_and_provenance(planted: dict[str, Any]) -> None:
    out = planted["root"] / "out"
    rep = json.loads((out / "report.json").read_text())
    assert rep["format_version"] == 1 and rep["curator_version"]
    model = load_model(planted["model"])
    assert rep["model"]["fingerprint"] == model.fingerprint
    assert rep["budget"]["steps"] == 8 and rep["budget"]["examples"] == 8 and rep["budget"]["batch_size"] == 4 and rep["budget"]["lr"] == 5e-3
    assert rep["seeds"] == [0] and rep["measure"] == "loss" and rep["measures"] == ["loss", "accuracy"]
    md = (out / "report.md").read_text()
    assert "Measured ranking (loss gain, best first): copy >" in md and "| influence in-task ↑ | copy >" in md
    assert (out / "validate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "validate.json").read_text())["model"]["fingerprint"] == model.fingerprint


def test_saved_adapter_reproduces_its_measurement(planted: dict[str, Any]) -> None:
    from peft import PeftModel

    run = planted["root"] / "out" / "runs" / "copy" / "seed-0"
    base = load_model(planted["model"])
    tuned = PeftModel.from_pretrained(base.model, str(run / "adapter"))
    got = evaluate(LoadedModel(base.spec, tuned, base.tokenizer, base.fingerprint), load_eval(planted["eval"]), EvalConfig(accuracy=False, max_length=128))
    assert got["loss"] == pytest.approx(json.loads((run / "metrics.json").read_text())["loss"], rel=1e-5)


def test_predictions_read_from_report_folders(planted: dict[str, Any]) -> None:
    pred_dir = planted["root"] / "out" / "predictions"
    reports = read_reports([pred_dir])  # a demo-like folder with study/ and selection/
    assert sorted(reports) == ["selection", "study"]
    table = predictor_table(reports, ["copy", "noise", "other"])
    assert table == {k: {kk: vv for kk, vv in v.items() if kk != "against" and kk != "ranking"} for k, v in planted["result"].report["predictors"].items()}
    bad = write_jsonl(planted["root"] / "bad.json", [])
    bad.write_text('{"hello": 1}')
    with pytest.raises(InputError, match="not a study or selection report"):
        read_reports([bad])
    with pytest.raises(InputError, match="no such file"):
        read_reports([planted["root"] / "missing"])


# --------------------------------------------------------------------------- resume


CHILD = """
import os, signal, sys
from curator.validation.run import run_validate
from tests.test_validate import planted_config

def progress(stage, done, total):
    if stage == "train noise (seed 0)" and done == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # killed mid-training of the second strategy

run_validate(sys.argv[1], sys.argv[2], sys.argv[3], planted_config(sys.argv[4], predict=False), progress=progress)
"""


def test_killed_run_resumes_without_redoing_finished_strategies(planted: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(planted["cands"]), str(planted["eval"]), str(out), planted["model"]], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, child.stderr[-2000:]
    finished = out / "runs" / "copy" / "seed-0" / "metrics.json"
    assert finished.exists() and not (out / "runs" / "noise" / "seed-0").exists() and not (out / "report.json").exists()
    stamp = finished.stat().st_mtime_ns
    events: list[tuple[str, int, int]] = []
    r = run_validate(planted["cands"], planted["eval"], out, planted_config(planted["model"], predict=False), progress=lambda s, d, t: events.append((s, d, t)))
    trained = {s for s, _, _ in events if s.startswith("train ")}
    assert trained == {"train noise (seed 0)", "train other (seed 0)"}
    assert ("reuse copy (seed 0)", 1, 1) in events and "evaluate base model" not in {s for s, _, _ in events}
    assert r.reused == [("copy", 0)] and r.trained == [("noise", 0), ("other", 0)]
    assert finished.stat().st_mtime_ns == stamp
    assert r.report["measured_ranking"][0] == "copy"
    assert r.report["predictors"] == {}
    # a second rerun trains nothing and gives the same measurements
    again = run_validate(planted["cands"], planted["eval"], out, planted_config(planted["model"], predict=False))
    assert again.trained == [] and again.report["measured"] == r.report["measured"]
    # a different budget in the same folder is refused, naming the field
    with pytest.raises(MismatchError, match="steps=8.*has 9"):
        run_validate(planted["cands"], planted["eval"], out, ValidateConfig(model=planted["model"], predict=False, train=FinetuneConfig(steps=9, lr=5e-3, batch_size=4, max_length=128), evaluation=EvalConfig(max_new_tokens=12, max_length=128)))
    # a new seed adds runs and reports mean ± std
    more = run_validate(planted["cands"], planted["eval"], out, planted_config(planted["model"], predict=False, seeds=(0, 1), strategies=("copy",)))
    assert more.trained == [("copy", 1)] and more.reused == [("copy", 0)]
    assert more.report["measured"]["copy"]["loss_gain"]["std"] is not None and more.report["measured"]["copy"]["n_seeds"] == 2


# --------------------------------------------------------------------------- bad input → one line, exit 2


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(cli, args)


def one_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    cands = [{"prompt": f"q{i}", "response": f"r{i} {s}", "strategy": s, "task": "t"} for i in range(3) for s in ("direct", "cot")]
    cands.append({"prompt": "q9", "response": "extra", "strategy": "cot", "task": "t"})
    evals = [{"prompt": "e", "response": "plain text", "task": "t"}]
    return write_jsonl(tmp_path / "c.jsonl", cands), write_jsonl(tmp_path / "e.jsonl", evals)


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--strategies", "direct,zzz"], ["unknown strategy 'zzz'", "direct"]),
        (["--steps", "0"], ["--steps 0", ">= 1"]),
        (["--lr", "-1"], ["--lr"]),
        (["--seeds", "0"], ["--seeds 0"]),
        (["--examples", "4"], ["--examples 4", "direct", "has only 3"]),
        (["--measure", "accuracy"], ["no eval response", "--measure loss"]),
    ],
)
def test_bad_input_exits_2_with_one_line(small: tuple[Path, Path], tmp_path: Path, extra: list[str], needles: list[str]) -> None:
    c, e = small
    one_error(invoke(["validate", str(c), str(e), "--out", str(tmp_path / "o"), "--model", "tiny-random", "--no-predict", *extra]), *needles)
    assert not (tmp_path / "o").exists()


def test_no_eval_rows_and_foreign_out_folder(small: tuple[Path, Path], tmp_path: Path) -> None:
    c, _ = small
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_error(invoke(["validate", str(c), str(empty), "--out", str(tmp_path / "o"), "--model", "tiny-random"]), "empty.jsonl", "no rows")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    one_error(invoke(["-q", "validate", str(c), str(small[1]), "--out", str(foreign), "--model", "tiny-random", "--no-predict"]), "not a validate folder")


def test_cli_end_to_end_two_strategies(small: tuple[Path, Path], tmp_path: Path) -> None:
    c, e = small
    out = tmp_path / "o"
    r = invoke(["-q", "validate", str(c), str(e), "--out", str(out), "--model", "tiny-random", "--steps", "2", "--max-new-tokens", "4", "--samples", "1", "--dim", "64", "--strategies", "direct", "--strategies", "cot"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "trained 2 run(s), reused 0" in r.output and "measured ranking (loss gain):" in r.output
    assert "Spearman n/a" in r.output  # 2 strategies: undefined, said so instead of NaN
    assert "nan" not in r.output.lower()
    rep = json.loads((out / "report.json").read_text())
    assert rep["measures"] == ["loss"]  # "plain text" has no extractable answer: accuracy is not measured
    assert all(p["against"]["loss"]["spearman"] is None for p in rep["predictors"].values())
    r2 = invoke(["-q", "validate", str(c), str(e), "--out", str(out), "--model", "tiny-random", "--steps", "2", "--max-new-tokens", "4", "--samples", "1", "--dim", "64", "--strategies", "direct,cot"])
    assert r2.exit_code == 0 and "trained 0 run(s), reused 2" in r2.output
    # predictions read from another run's reports (a demo-like folder), nothing computed
    out2 = tmp_path / "o2"
    r3 = invoke(["-q", "validate", str(c), str(e), "--out", str(out2), "--model", "tiny-random", "--steps", "2", "--no-accuracy", "--predictions", str(out / "predictions"), "--no-predict"])
    assert r3.exit_code == 0, (r3.output, r3.exception)
    rep2 = json.loads((out2 / "report.json").read_text())
    assert not (out2 / "predictions").exists()
    assert rep2["predictors"]["influence in-task"]["source"] == str(out / "predictions" / "study" / "report.json")
    assert rep2["predictors"]["alignment"]["values"] == rep["predictors"]["alignment"]["values"]


@pytest.mark.slow
def test_smollm2_two_strategies_one_step(tmp_path: Path) -> None:
    """The bundled SmolLM2 through the whole loop: chat template, peft LoRA on its layers, saved adapters."""
    from curator.demo import demo_data_dir

    data = demo_data_dir()
    config = ValidateConfig(strategies=("direct", "cot"), train=FinetuneConfig(steps=1, batch_size=2, examples=2), evaluation=EvalConfig(accuracy=False), predict=False)
    r = run_validate(data / "candidates.jsonl", data / "eval.jsonl", tmp_path / "o", config)
    assert sorted(r.trained) == [("cot", 0), ("direct", 0)]
    assert r.report["base"]["loss"] > 0 and all(r.report["measured"][s]["loss"]["mean"] is not None for s in ("direct", "cot"))
    assert (tmp_path / "o" / "runs" / "cot" / "seed-0" / "adapter" / "adapter_model.safetensors").exists()
