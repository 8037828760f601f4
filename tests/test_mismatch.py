"""Mismatched stores are refused, never mixed: through the CLI, one line naming the field and both
values, exit 2, and nothing already written changes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from curator.cli.main import cli
from curator.model.models import load_model
from tests.test_concurrency import eval_rows
from tests.conftest import write_jsonl
from tests.test_crash import candidate_rows

BASE = ["--model", "tiny-random", "--dim", "64", "--max-length", "64", "--batch-size", "8"]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["-q", *args])


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def refused(r: Result, *needles: str) -> str:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mismatch")
    cands = write_jsonl(root / "cands.jsonl", candidate_rows(8))
    evals = write_jsonl(root / "eval.jsonl", eval_rows())
    # another model: the tiny model with one weight nudged, saved as a local folder
    other = load_model("tiny-random")
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    other.model.save_pretrained(root / "other-model")
    other.tokenizer.save_pretrained(root / "other-model")
    assert run("index", str(cands), "--out", str(root / "train"), *BASE).exit_code == 0
    variants = {
        "same": [],
        "seed": ["--seed", "1"],
        "dim": ["--dim", "32"],
        "lora": ["--lora-r", "4"],
        "model": ["--model", str(root / "other-model")],
    }
    for name, extra in variants.items():
        r = run("index", str(evals), "--out", str(root / f"eval-{name}"), *BASE, *extra)
        assert r.exit_code == 0, r.output
    return {"root": root, "cands": cands, "train": root / "train"}


@pytest.mark.parametrize("variant,field,a,b", [
    ("seed", "projection", '"seed": 0', '"seed": 1'),
    ("dim", "projection", '"dim": 64', '"dim": 32'),
    ("lora", "lora", '"r": 8', '"r": 4'),
    ("model", "model.fingerprint", None, None),
])
def test_scoring_against_an_eval_store_of_other_settings_is_refused(built: dict[str, Path], variant: str, field: str, a: str | None, b: str | None) -> None:
    root = built["root"]
    assert run("influence", "--train", str(built["train"]), "--eval", str(root / "eval-same"), "--out", str(root / "ok.parquet")).exit_code == 0
    out = root / f"scores-{variant}.parquet"
    line = refused(run("influence", "--train", str(built["train"]), "--eval", str(root / f"eval-{variant}"), "--out", str(out)), f"differ in {field}: ")
    if a is not None:
        assert a in line and b in line
    else:  # both fingerprints are named
        fps = [json.loads((p / "manifest.json").read_text())["model"]["fingerprint"] for p in (built["train"], root / f"eval-{variant}")]
        assert fps[0] != fps[1] and fps[0] in line and fps[1] in line
    assert not out.exists()
    line = refused(run("study", "--train", str(built["train"]), "--eval", str(root / f"eval-{variant}"), "--out", str(root / f"study-{variant}")), f"differ in {field}: ")
    assert not (root / f"study-{variant}").exists()


@pytest.mark.parametrize("extra,field", [(["--seed", "1"], "projection"), (["--lora-r", "4"], "lora"), (["--projection", "rademacher"], "projection"), (["--max-length", "80"], "gradient.max_length")])
def test_adding_rows_with_other_settings_is_refused_and_the_store_is_untouched(built: dict[str, Path], extra: list[str], field: str) -> None:
    more = write_jsonl(built["root"] / "more.jsonl", candidate_rows(12))
    before = tree_digest(built["train"])
    refused(run("index", str(more), "--out", str(built["train"]), *BASE, *extra), f"existing store {built['train']} and this run differ in {field}: ")
    assert tree_digest(built["train"]) == before


@pytest.mark.parametrize("version,needle", [(99, "upgrade curator"), (0, "rebuild the store with this curator's `curator index`"), (None, "rebuild the store")])
def test_other_format_versions_are_refused_with_the_step_to_take(built: dict[str, Path], tmp_path: Path, version: int | None, needle: str) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(built["train"], store)
    m = json.loads((store / "manifest.json").read_text())
    m["format_version"] = version
    (store / "manifest.json").write_text(json.dumps(m))
    before = tree_digest(store)
    refused(run("influence", "--train", str(store), "--eval", str(built["root"] / "eval-same"), "--out", str(tmp_path / "x.parquet")), f"store format version {version} is not supported", needle)
    refused(run("index", str(built["cands"]), "--out", str(store), *BASE), needle)
    assert tree_digest(store) == before and not (tmp_path / "x.parquet").exists()
