"""`curator validate --suite` on a tiny two-family suite, the sign test by hand, and the suite builder's pure parts."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from curator.io.data import load_eval, load_prompts
from curator.validation.suite import sign_test, sign_test_p, summarise
from tests.test_validate import invoke, one_error, one_thread  # noqa: F401  (one_thread: an autouse fixture)

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-random", "--steps", "2", "--max-new-tokens", "4", "--samples", "1", "--dim", "64", "--max-length", "128"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def family(root: Path, name: str, offset: int) -> None:
    """3 strategies × 4 prompts over 2 tasks, and 4 eval items: enough for Spearman (3 strategies) and cross-task influence."""
    cands, evals = [], []
    for i in range(4):
        task = "low" if i < 2 else "high"
        a, b = offset + i, 2 * offset + 3 * i
        q = f"What is {a} + {b}?"
        cands += [
            {"id": f"{name}-{i}-copy", "prompt": q, "response": f"The answer is {a + b}.", "strategy": "copy", "task": task, "group": f"{name}-{i}"},
            {"id": f"{name}-{i}-noise", "prompt": q, "response": "qwx zjk vbp #@%", "strategy": "noise", "task": task, "group": f"{name}-{i}"},
            {"id": f"{name}-{i}-words", "prompt": q, "response": f"{a} plus {b} makes {a + b}.", "strategy": "words", "task": task, "group": f"{name}-{i}"},
        ]
        evals.append({"id": f"{name}-e{i}", "prompt": f"What is {a + 7} + {b + 1}?", "response": f"The answer is {a + b + 8}.", "task": task})
    write_jsonl(root / name / "candidates.jsonl", cands)
    write_jsonl(root / name / "eval.jsonl", evals)


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("suite")
    suite = root / "suite"
    family(suite, "arith", 10)
    family(suite, "sums", 40)
    (suite / "SOURCE.md").write_text("a file beside the families is not a family\n")
    out = root / "out"
    r = invoke(["-q", "validate", "--suite", str(suite), "--out", str(out), *TINY])
    assert r.exit_code == 0, (r.output, r.exception)
    return {"suite": suite, "out": out, "result": r}


# --------------------------------------------------------------------------- the sign test and the table, by hand


def test_sign_test_p_exact_hand_values() -> None:
    assert sign_test_p(4, 0) == pytest.approx(0.125)  # 2 * (1/2)^4
    assert sign_test_p(0, 4) == pytest.approx(0.125)
    assert sign_test_p(5, 1) == pytest.approx(2 * (1 + 6) / 64)  # 2 * P(X <= 1), X ~ Bin(6, 1/2)
    assert sign_test_p(10, 0) == pytest.approx(2 / 1024)
    assert sign_test_p(3, 3) == 1.0  # capped at 1
    assert sign_test_p(0, 0) is None


def test_sign_test_drops_ties_and_undefined_families() -> None:
    a = {"f1": 0.8, "f2": 0.4, "f3": 0.2, "f4": 1.0, "f5": 0.5, "f6": None}
    b = {"f1": -0.8, "f2": 0.0, "f3": -0.2, "f4": 0.4, "f5": 0.5, "f6": 0.3}
    t = sign_test(a, b)
    assert (t["wins"], t["losses"], t["ties"], t["n"]) == (4, 0, 1, 4)
    assert t["p_value"] == pytest.approx(0.125) and t["undefined"] == ["f6"]
    assert t["per_family"] == {"f1": "win", "f2": "win", "f3": "win", "f4": "win", "f5": "tie", "f6": "n/a"}


def hand_report(rhos: dict[str, float | None], hits: dict[str, bool | None]) -> dict[str, Any]:
    preds = {n: {"ranking": ["a", "b", "c"], "against": {"loss": {"spearman": rhos[n], "note": None, "top1": {"predicted": ["a"], "measured": ["a"], "hit": hits[n], "tied": False}}}} for n in rhos}
    gain = {"mean": 0.1, "std": None}
    return {"predictors": preds, "strategies": ["a", "b", "c"], "measured_ranking": ["a", "b", "c"], "measured": {s: {"loss_gain": gain} for s in "abc"},
            "eval": {"n": 4}, "budget": {"examples": 3}, "measured_notes": []}


def test_summarise_means_hit_rates_and_order() -> None:
    reports = {
        "f1": hand_report({"perplexity": -0.5, "alignment": 0.5, "influence in-task": 1.0}, {"perplexity": False, "alignment": True, "influence in-task": True}),
        "f2": hand_report({"perplexity": 0.2, "alignment": 0.1, "influence in-task": None}, {"perplexity": True, "alignment": False, "influence in-task": None}),
    }
    s = summarise(reports, "loss")
    assert list(s["predictors"]) == ["influence in-task", "alignment", "perplexity"]  # the report's display order
    assert s["predictors"]["alignment"]["mean_spearman"] == pytest.approx(0.3)
    assert s["predictors"]["influence in-task"]["mean_spearman"] == pytest.approx(1.0) and s["predictors"]["influence in-task"]["n"] == 1
    assert (s["predictors"]["influence in-task"]["top1_hits"], s["predictors"]["influence in-task"]["top1_n"]) == (1, 1)
    assert s["predictors"]["perplexity"]["top1_rate"] == pytest.approx(0.5) and s["predictors"]["perplexity"]["negative"] == ["f1"]
    assert (s["sign_test"]["wins"], s["sign_test"]["losses"], s["sign_test"]["p_value"]) == (1, 1, 1.0)


# --------------------------------------------------------------------------- the suite through the CLI


def test_suite_table_matches_each_familys_report(suite_run: dict[str, Any]) -> None:
    out = suite_run["out"]
    s = json.loads((out / "suite.json").read_text())
    assert sorted(s["families"]) == ["arith", "sums"] and s["measure"] == "loss" and s["seeds"] == [0]
    assert s["budget"]["steps"] == 2 and "examples" not in s["budget"]
    defined: dict[str, list[float]] = {}
    for fam in ("arith", "sums"):
        rep = json.loads((out / fam / "report.json").read_text())
        row = s["families"][fam]
        assert row["measured_ranking"] == rep["measured_ranking"] and row["report"] == f"{fam}/report.json" and row["n_eval"] == 4
        assert set(row["predictors"]) == set(rep["predictors"]) and {"influence in-task", "influence cross-task", "alignment", "perplexity", "sappl"} <= set(row["predictors"])
        for name, p in rep["predictors"].items():
            assert row["predictors"][name]["spearman"] == p["against"]["loss"]["spearman"], (fam, name)
            assert row["predictors"][name]["top1"] == p["against"]["loss"]["top1"], (fam, name)
            assert s["predictors"][name]["spearman"][fam] == p["against"]["loss"]["spearman"]
            if p["against"]["loss"]["spearman"] is not None:
                defined.setdefault(name, []).append(p["against"]["loss"]["spearman"])
    assert defined, "no predictor had a defined Spearman: the fixture no longer tests the mean"
    for name, p in s["predictors"].items():
        vals = defined.get(name, [])
        assert p["n"] == len(vals)
        assert p["mean_spearman"] == (pytest.approx(sum(vals) / len(vals)) if vals else None), name
    a, b = s["predictors"]["alignment"]["spearman"], s["predictors"]["perplexity"]["spearman"]
    wins = sum(a[f] is not None and b[f] is not None and a[f] > b[f] for f in a)
    losses = sum(a[f] is not None and b[f] is not None and a[f] < b[f] for f in a)
    assert (s["sign_test"]["wins"], s["sign_test"]["losses"]) == (wins, losses)
    assert s["sign_test"]["p_value"] == sign_test_p(wins, losses)
    md = (out / "suite.md").read_text()
    assert "| predictor | arith | sums | mean Spearman | top-1 hits |" in md and "## Sign test: alignment against perplexity" in md
    assert (out / "suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = suite_run["result"].output
    assert "2 families: trained 6 run(s), reused 0" in text and "arith: measured ranking (loss gain, 4 eval items):" in text
    assert "sign test, alignment vs perplexity:" in text and f"report: {out / 'suite.md'}" in text and "nan" not in text.lower()


def test_rerun_reuses_every_run(suite_run: dict[str, Any]) -> None:
    out = suite_run["out"]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/runs/*/seed-0/metrics.json")}
    assert len(stamps) == 6
    before = json.loads((out / "suite.json").read_text())
    r = invoke(["-q", "validate", "--suite", str(suite_run["suite"]), "--out", str(out), *TINY])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "trained 0 run(s), reused 6 finished run(s)" in r.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    after = json.loads((out / "suite.json").read_text())
    assert all(after["families"][f]["trained"] == 0 and after["families"][f]["reused"] == 3 for f in after["families"])
    assert after["predictors"] == before["predictors"] and after["sign_test"] == before["sign_test"]
    # a different budget in a family folder is refused as a plain validate refuses it
    one_error(invoke(["-q", "validate", "--suite", str(suite_run["suite"]), "--out", str(out), *TINY[:-2], "--max-length", "96"]), "max_length=128", "has 96")


# --------------------------------------------------------------------------- bad input → one line, exit 2


def test_bad_suite_input_exits_2_with_one_line(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    family(suite, "fam", 10)
    c, e = suite / "fam" / "candidates.jsonl", suite / "fam" / "eval.jsonl"
    out = tmp_path / "out"
    one_error(invoke(["validate", str(c), "--suite", str(suite), "--out", str(out)]), "--suite", "takes no CANDIDATES or EVAL")
    one_error(invoke(["validate", str(c), str(e), "--suite", str(suite), "--out", str(out)]), "takes no CANDIDATES or EVAL")
    one_error(invoke(["validate", "--out", str(out)]), "give CANDIDATES and EVAL", "--suite DIR")
    one_error(invoke(["validate", str(c), "--out", str(out)]), "give CANDIDATES and EVAL")
    one_error(invoke(["validate", "--suite", str(tmp_path / "nope"), "--out", str(out), "--model", "tiny-random"]), "nope: no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "SOURCE.md").write_text("no families here\n")
    one_error(invoke(["validate", "--suite", str(empty), "--out", str(out), "--model", "tiny-random"]), "no family folders", "candidates.jsonl and eval.jsonl")
    one_error(invoke(["validate", "--suite", str(suite), "--out", str(out), "--predictions", str(e), "--model", "tiny-random"]), "--predictions cannot be combined with --suite")
    one_error(invoke(["validate", "--suite", str(suite), "--out", str(suite / "run"), "--model", "tiny-random"]), "inside --suite", "outside the suite folder")
    one_error(invoke(["validate", "--suite", str(suite), "--out", str(out), "--model", "tiny-random", "--examples", "5"]), "--examples 5", "family fam", "has only 4", "--examples 4")
    one_error(invoke(["validate", "--suite", str(suite), "--out", str(out), "--model", "tiny-random", "--strategies", "copy,zzz"]), "unknown strategy 'zzz' in family fam", "copy, noise, words")
    write_jsonl(suite / "zeta" / "eval.jsonl", [{"prompt": "p", "response": "r", "task": "t"}])
    one_error(invoke(["validate", "--suite", str(suite), "--out", str(out), "--model", "tiny-random"]), str(suite / "zeta" / "candidates.jsonl"), "missing", "curator generate")
    (suite / "zeta" / "eval.jsonl").rename(suite / "zeta" / "candidates.jsonl")
    one_error(invoke(["validate", "--suite", str(suite), "--out", str(out), "--model", "tiny-random"]), str(suite / "zeta" / "eval.jsonl"), "missing")
    (suite / "zeta" / "candidates.jsonl").unlink()
    write_jsonl(suite / "zeta" / "candidates.jsonl", [{"prompt": "p", "response": "r"}])
    write_jsonl(suite / "zeta" / "eval.jsonl", [{"prompt": "p", "response": "r", "task": "t"}])
    one_error(invoke(["validate", "--suite", str(suite), "--out", str(out), "--model", "tiny-random"]), "candidates.jsonl", "strategy")
    assert not out.exists()  # every refusal came before anything was written
    (suite / "zeta" / "candidates.jsonl").unlink()
    (suite / "zeta" / "eval.jsonl").unlink()
    (suite / "zeta").rmdir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    one_error(invoke(["validate", "--suite", str(suite), "--out", str(foreign), "--model", "tiny-random"]), "not a validate --suite folder")


# --------------------------------------------------------------------------- scripts/build_strategy_suite.py, offline parts


@pytest.fixture(scope="module")
def builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_strategy_suite", REPO / "scripts" / "build_strategy_suite.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def items(builder: Any, tasks: dict[str, int]) -> list[Any]:
    return [builder.Item("fam", t, f"{t}-{i}", f"{t} question {i}?", f"The answer is {i}.", "m") for t, n in tasks.items() for i in range(n)]


def test_split_is_disjoint_seeded_and_covers_eval_tasks(builder: Any) -> None:
    pool = items(builder, {f"t{k}": 3 + k % 4 for k in range(20)})
    train, held = builder.split(pool, 16, 12, random.Random("s:0"))
    assert (len(train), len(held)) == (16, 12)
    assert not {id(x) for x in train} & {id(x) for x in held}
    assert {x.task for x in held} <= {x.task for x in train}  # every eval task has training prompts
    again = builder.split(pool, 16, 12, random.Random("s:0"))
    assert [x.key for x in again[0]] == [x.key for x in train] and [x.key for x in again[1]] == [x.key for x in held]
    other = builder.split(pool, 16, 12, random.Random("s:1"))
    assert [x.key for x in other[1]] != [x.key for x in held]
    # a source smaller than asked for shrinks both sides in proportion (gsm8k's 8 exemplars: 5 + 3)
    small_train, small_eval = builder.split(items(builder, {"gsm8k": 8}), 16, 12, random.Random("s:0"))
    assert (len(small_train), len(small_eval)) == (5, 3) and not {x.key for x in small_train} & {x.key for x in small_eval}


def fixture_wheels(root: Path) -> tuple[Path, Path]:
    """Two small wheels with the real wheels' member paths and formats (made-up questions)."""
    lm = root / "lm_eval-0.4.13-py3-none-any.whl"
    gsm = {"fewshot_config": {"samples": [{"question": f"Tom has {i} apples and gets 2 more. How many?", "target": f"{i} + 2 = {i + 2}. The answer is {i + 2}."} for i in range(8)]}}
    bbh = {t: {"description": f"Solve {t}.\n\n", "fewshot_config": {"samples": [{"input": f"{t} input {i}\nOptions:\n(A) x\n(B) y", "target": f"Step {i}. So the answer is (A)."} for i in range(3)]}} for t in ("alpha", "beta", "gamma")}
    mmlu = {s: "The following are questions about " + s + ".\n\n" + "\n\n".join(f"Q: {s} question {i}?\n(A) one (B) two (C) three (D) four\nA: Let's think step by step. Reason {i}. The answer is (B)." for i in range(5)) for s in ("physics", "law", "abstract_algebra")}
    with zipfile.ZipFile(lm, "w") as zf:
        zf.writestr("lm_eval-0.4.13.dist-info/METADATA", "Metadata-Version: 2.1\nName: lm_eval\nLicense: MIT\n")
        zf.writestr(builder_member("gsm8k"), json.dumps(gsm))  # JSON is YAML
        for t, d in bbh.items():
            zf.writestr(f"lm_eval/tasks/bbh/cot_fewshot/{t}.yaml", json.dumps(d))
        zf.writestr("lm_eval/tasks/bbh/cot_fewshot/_cot_fewshot_template_yaml", "num_fewshot: 3\n")
        zf.writestr("lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json", json.dumps(mmlu))
    champ = root / "champ_dataset-1.0.0-py3-none-any.whl"
    problems = {f"P_{cat}_{i}": {"_text": f"{cat} problem {i}", "category": cat, "solution": {"steps": [{"_text": f"Step one of {i}."}, {"_text": "Step two."}]}, "_answer": str(i)} for cat in ("Sequence", "Polynomial") for i in range(1, 9)}
    with zipfile.ZipFile(champ, "w") as zf:
        zf.writestr("champ_dataset-1.0.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: champ-dataset\nLicense: MIT\nClassifier: License :: OSI Approved :: MIT License\n")
        zf.writestr("champ_dataset/dataset_files/v0.json", json.dumps({"problems": problems, "concepts": {}, "hints": {}}))
    return lm, champ


def builder_member(name: str) -> str:
    return {"gsm8k": "lm_eval/tasks/gsm8k/gsm8k-cot.yaml"}[name]


def check_built(out: Path, families: list[str]) -> None:
    for fam in families:
        prompts = load_prompts(out / fam / "prompts.jsonl")  # the rows curator generate reads
        evals = load_eval(out / fam / "eval.jsonl")  # the rows curator validate reads
        assert prompts and evals and all(p.reference for p in prompts)
        assert not {p.prompt for p in prompts} & {e.prompt for e in evals}, fam
        assert {e.task for e in evals} <= {p.task for p in prompts}, fam
        for row in map(json.loads, (out / fam / "prompts.jsonl").read_text().splitlines()):
            assert set(row) == {"id", "prompt", "reference", "task"} and row["prompt"] and row["reference"]
    assert "## Sources" in (out / "SOURCE.md").read_text()


def test_build_from_fixture_wheels(builder: Any, tmp_path: Path) -> None:
    lm, champ = fixture_wheels(tmp_path)
    out = tmp_path / "suite"
    assert builder.main(["--out", str(out), "--lm-eval-wheel", str(lm), "--champ-wheel", str(champ), "--offline", "--train", "4", "--eval", "2"]) == 0
    check_built(out, list(builder.FAMILIES))
    assert not any("abstract_algebra" in line for line in (out / "mmlu" / "prompts.jsonl").read_text().splitlines())  # a damaged subject is left out
    gsm = [json.loads(x) for x in (out / "gsm8k" / "prompts.jsonl").read_text().splitlines()]
    assert len(gsm) == 4 and gsm[0]["reference"].endswith(".") and "The answer is" in gsm[0]["reference"]
    bbh = json.loads((out / "bbh" / "prompts.jsonl").read_text().splitlines()[0])
    assert bbh["prompt"].startswith("Solve ") and bbh["reference"].startswith("Let's think step by step. Step")
    champ_row = json.loads((out / "champ-math" / "eval.jsonl").read_text().splitlines()[0])
    assert champ_row["response"].startswith("Step one of") and champ_row["response"].endswith(f"The answer is {champ_row['id'].rsplit('_', 1)[1]}.")
    first = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    builder.main(["--out", str(out), "--lm-eval-wheel", str(lm), "--champ-wheel", str(champ), "--offline", "--train", "4", "--eval", "2"])
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == first  # deterministic
    with pytest.raises(SystemExit, match="--offline"):
        builder.main(["--out", str(tmp_path / "x"), "--lm-eval-wheel", str(tmp_path / "none"), "--offline"])


def real_wheel(name: str) -> Path | None:
    for folder in ("/tmp/lmeval", "/tmp/champ", "/tmp/x"):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def test_committed_suite_is_what_the_script_builds(builder: Any, tmp_path: Path) -> None:
    lm, champ = real_wheel(builder.LM_EVAL[1]), real_wheel(builder.CHAMP[1])
    if lm is None or champ is None:
        pytest.skip("the lm-eval 0.4.13 and champ-dataset 1.0.0 wheels are not on this machine (pip download --no-deps them into /tmp/lmeval and /tmp/champ)")
    out = tmp_path / "suite"
    builder.main(["--out", str(out), "--lm-eval-wheel", str(lm), "--champ-wheel", str(champ), "--offline"])
    check_built(out, list(builder.FAMILIES))
    committed = REPO / "benchmarks" / "strategy-suite"
    got = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    held = {p.relative_to(committed): p.read_bytes() for p in committed.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert got == {k: v for k, v in held.items() if k in got}  # what the build writes is byte-identical
    assert set(held) - set(got) <= {Path(f) / n for f in builder.FAMILIES for n in ("candidates.jsonl", "candidates.generate.json")}  # --generate adds only these


def test_generate_runs_the_real_cli_per_family(builder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from curator.io.data import load_candidates

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    lm, champ = fixture_wheels(tmp_path)
    out = tmp_path / "suite"
    args = ["--out", str(out), "--lm-eval-wheel", str(lm), "--champ-wheel", str(champ), "--offline", "--families", "gsm8k", "--generate",
            "--model", "tiny-random", "--per-strategy", "2", "--max-new-tokens", "4", "--batch-size", "4"]
    assert builder.main(args) == 0
    cands = load_candidates(out / "gsm8k" / "candidates.jsonl")
    assert sorted({c.strategy for c in cands}) == sorted(builder.STRATEGIES)
    assert all(sum(c.strategy == s for c in cands) == 2 for s in builder.STRATEGIES)
    assert not (out / "mmlu").exists()
