"""The core never imports the CLI, the integrations, click or argilla."""

from __future__ import annotations

import json
import subprocess
import sys


def test_core_imports_no_cli_or_argilla():
    code = (
        "import sys, json\n"
        "import curator, curator.data, curator.models, curator.encoding, curator.gradients, curator.projection,"
        " curator.store, curator.indexing, curator.influence, curator.study, curator.warmup, curator.demo, curator.tables,"
        " curator.metrics, curator.alignment, curator.likelihood, curator.sampling, curator.align, curator.selection, curator.ranking\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'argilla') or m.startswith(('curator.cli', 'curator.integrations')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
