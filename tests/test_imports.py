"""The core never imports the CLI, the integrations, click or argilla."""

from __future__ import annotations

import json
import subprocess
import sys


def test_core_imports_no_cli_or_argilla():
    code = (
        "import sys, json\n"
        "import importlib, pkgutil, curator\n"
        "for m in pkgutil.walk_packages(curator.__path__, 'curator.'):\n"
        "    importlib.import_module(m.name)\n"
        "[getattr(curator, name) for name in curator.__all__]\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'argilla') or m.startswith(('curator.cli', 'curator.integrations')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
