"""`curator demo --argilla`: the whole loop on the bundled data — serve, push, and the URL for annotators."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from curator.cli.main import cli
from curator.integrations.argilla.server import status, stop


@pytest.mark.argilla
def test_demo_argilla_serves_and_pushes(tmp_path: Path) -> None:
    import argilla as rg

    out = tmp_path / "demo"
    try:
        r = CliRunner().invoke(cli, ["-q", "demo", "--model", "tiny-random", "--dim", "64", "--tasks", "2", "--probes", "2", "--samples", "2", "--max-new-tokens", "8", "--out", str(out), "--argilla"])
        assert r.exit_code == 0, r.output
        url = re.search(r"annotate at (http://127\.0\.0\.1:\d+)", r.output).group(1)
        st = status(out / "argilla-data")
        assert st.running and st.info is not None and st.info.url == url
        client = rg.Argilla(api_url=url, api_key=st.info.api_key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = client.datasets(name="curator-demo", workspace="curator")
            records = list(ds.records(with_suggestions=True, with_vectors=True))
        assert len(records) == 4  # 2 subjects × 2 probe questions, one record per prompt
        assert all(rec.suggestions["ranking"].agent.startswith("curator/") for rec in records)
        assert all(len(rec.vectors["gradient"]) == 64 for rec in records)
    finally:
        stop(out / "argilla-data")
