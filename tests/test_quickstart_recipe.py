"""The quickstart's generate recipe (sample per strategy → align → select → full set with the
winner) runs exactly as written, on the bundled model (marked slow; CI runs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curator.demo import demo_data_dir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
HEADING = "## 3. Make the candidates: a sample per strategy, then the full set"


def recipe() -> str:
    text = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the recipe is one bash block"
    return blocks[0]


def test_the_quickstart_generate_recipe_runs_as_written(tmp_path: Path) -> None:
    script = recipe()
    assert "curator generate" in script and "curator select" in script
    (tmp_path / "curator" / "assets" / "demo").mkdir(parents=True)
    shutil.copy(demo_data_dir() / "prompts.jsonl", tmp_path / "curator" / "assets" / "demo" / "prompts.jsonl")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr
    winner = json.loads((tmp_path / "gen" / "selection" / "report.json").read_text())["recommended"]
    sample = [json.loads(x) for x in (tmp_path / "gen" / "sample.jsonl").read_text().splitlines()]
    assert {x["strategy"] for x in sample} <= {"direct", "cot", "clarify", "evaluate", "own-words"} and len({x["group"] for x in sample}) == 6
    assert winner in {x["strategy"] for x in sample}
    full = [json.loads(x) for x in (tmp_path / "gen" / "candidates.jsonl").read_text().splitlines()]
    assert {x["strategy"] for x in full} == {winner}
    side = json.loads((tmp_path / "gen" / "candidates.generate.json").read_text())
    empty = side["runs"][0]["counts"][winner]["empty"]
    assert len(full) + empty == 24 and len({x["group"] for x in full}) == len(full)
