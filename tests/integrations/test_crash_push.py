"""`curator argilla push` killed (SIGKILL) mid-way, then rerun, on a real argilla-server.

The client process is killed at seeded moments (after the server holds k records, k random), the
same push is rerun, and the dataset must then equal the dataset of an uninterrupted push of the
same data: the same record ids, each once, with the same fields, metadata and suggestions.
(The server being killed instead is ``test_failures.py``.)
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.integrations.test_failures import WS, candidates, dataset_total, write_candidates

pytestmark = pytest.mark.argilla
N_RECORDS = 40
SEED = int(os.environ.get("CURATOR_CRASH_SEED", "0"))


def dataset_content(url: str, key: str, name: str) -> dict[str, Any]:
    """Every record of the dataset by id: fields, metadata, suggestions (duplicate ids fail)."""
    import argilla as rg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = rg.Argilla(api_url=url, api_key=key).datasets(name=name, workspace=WS)
        out: dict[str, Any] = {}
        for r in ds.records(with_suggestions=True, with_responses=False, with_vectors=False):
            assert str(r.id) not in out, f"{name}: record {r.id} is on the server twice"
            sugg = sorted((s.question_name, repr(s.value), s.score, s.agent) for s in r.suggestions)
            out[str(r.id)] = (dict(r.fields), dict(r.metadata), sugg)
        return out


def push_cmd(path: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "curator.cli.main", "-q", "argilla", "push", str(path), "--dataset", name, "--batch-size", "2"]


def test_push_killed_mid_way_and_rerun_equals_a_clean_push(argilla_server: Any, tmp_path: Path) -> None:
    url, key = argilla_server.url, argilla_server.api_key
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGILLA_", "CURATOR_ARGILLA_"))}
    env.update(ARGILLA_API_URL=url, ARGILLA_API_KEY=key)
    tag = f"crash-{uuid.uuid4().hex[:6]}"
    path = write_candidates(tmp_path / "cands.jsonl", candidates(N_RECORDS, tag))

    clean = f"{tag}-clean"
    done = subprocess.run(push_cmd(path, clean), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = dataset_content(url, key, clean)
    assert len(expected) == N_RECORDS

    rng = random.Random(SEED)
    for t, k in enumerate(sorted(rng.sample(range(2, N_RECORDS - 4), 3))):
        name = f"{tag}-t{t}"
        proc = subprocess.Popen(push_cmd(path, name), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while dataset_total(url, key, name) < k:
            assert proc.poll() is None, f"trial {t}: the push ended before the kill at {k} records: {proc.communicate()}"
            assert time.monotonic() < deadline, f"trial {t}: the push never reached {k} records"
            time.sleep(0.02)
        proc.kill()
        proc.communicate(timeout=30)
        partial = dataset_total(url, key, name)
        assert k <= partial < N_RECORDS, f"trial {t}: killed with {partial} records on the server"
        again = subprocess.run(push_cmd(path, name), env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        m = re.search(r"\((\d+) new, (\d+) updated\)", again.stdout)
        assert m is not None, again.stdout
        new, updated = int(m.group(1)), int(m.group(2))
        # what the killed push got on the server is updated, not added again (+2: the batch in flight at the kill)
        assert new + updated == N_RECORDS and partial <= updated <= partial + 2, (partial, again.stdout)
        assert dataset_content(url, key, name) == expected, f"trial {t} (killed at {partial} records, CURATOR_CRASH_SEED={SEED}): differs from a clean push"
        assert dataset_total(url, key, name) == N_RECORDS
