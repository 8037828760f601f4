"""Shared fixtures: tiny models built in code, small candidate/eval files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curator.model.models import LoadedModel, load_model


@pytest.fixture
def tiny() -> LoadedModel:
    """A fresh seeded tiny random Llama (fresh per test: LoRA is attached in place)."""
    return load_model("tiny-random")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def small_data(tmp_path: Path) -> tuple[Path, Path]:
    """3 probe questions × 2 strategies over tasks a/b, and 2 eval items per task."""
    cands, evals = [], []
    for i, task in enumerate(["a", "a", "b"]):
        q = f"Question {i} about {task}: what is {i} + {i}?"
        cands.append({"id": f"q{i}-direct", "prompt": q, "response": f"The answer is {2 * i}.", "strategy": "direct", "task": task, "group": f"q{i}"})
        cands.append({"id": f"q{i}-cot", "prompt": q, "response": f"{i} plus {i} makes {2 * i}. The answer is {2 * i}.", "strategy": "cot", "task": task, "group": f"q{i}"})
    for j, task in enumerate(["a", "a", "b", "b"]):
        evals.append({"id": f"e{j}", "prompt": f"Eval {j} on {task}: what is {j} + 1?", "response": f"The answer is {j + 1}.", "task": task})
    return write_jsonl(tmp_path / "cands.jsonl", cands), write_jsonl(tmp_path / "eval.jsonl", evals)
