"""The wheel: published as argilla-curator, imported as curator, with every room and file inside."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# source folder -> where it lands in the wheel (pyproject's package-dir)
MAPPED = {"curator": "curator", "cli": "curator/cli", "integrations": "curator/integrations"}


def test_wheel_is_argilla_curator_and_holds_every_module(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO), "-w", str(tmp_path)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith("argilla_curator-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(info).decode()
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "\nName: argilla-curator\n" in metadata
    assert "curator = curator.cli.main:main" in entry_points
    want = {
        f"{MAPPED[src]}/{f.relative_to(REPO / src).as_posix()}"
        for src in MAPPED
        for f in (REPO / src).rglob("*")
        if f.is_file() and f.suffix in (".py", ".jsonl", ".md") and "__pycache__" not in f.parts
    }
    assert sorted(want - names) == []
