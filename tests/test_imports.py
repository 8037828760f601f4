"""The core never imports the CLI, the integrations, click or argilla."""

from __future__ import annotations

import json
import subprocess
import sys


def test_core_imports_no_cli_or_argilla():
    code = (
        "import sys, json\n"
        "import curator, curator.io.data, curator.model.models, curator.model.encoding, curator.gradients.computer, curator.gradients.projection,"
        " curator.store.store, curator.influence.indexing, curator.influence.scoring, curator.influence.study, curator.gradients.warmup, curator.demo, curator.io.tables,"
        " curator.alignment.metrics, curator.alignment.similarity, curator.alignment.likelihood, curator.model.sampling, curator.alignment.align, curator.alignment.selection, curator.curation.ranking\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'argilla') or m.startswith(('curator.cli', 'curator.integrations')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
