"""The Argilla server is restarted in the middle of `curator argilla push`; a rerun loses and duplicates nothing.

A server of its own (its own data directory and ports, stopped at the end), so the session server of
the other tests is untouched. The push runs as a real `python -m curator.cli.main` subprocess over 48
prompt groups in batches of 2. To stop the server at a known point, the test pauses the pushing
process (SIGSTOP) as soon as its progress bar shows a few batches sent, counts the records on the
server, stops the server (``stop``), lets the push go on against the dead port (SIGCONT) and starts
the server again on the same port (``serve``). The push then either finishes through its retries or
gives up with one clear line; both are accepted, and the test says which happened. The same push is
then rerun, and the server is checked record by record against the content-hash ids and the fields
that ``plan_records`` gives.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from curator.cli.main import cli
from curator.io.data import Candidate, load_candidates
from curator.integrations.argilla.mapping import RANKING, plan_records, spec_for
from curator.integrations.argilla.server import serve, stop
from curator.curation.ranking import rank_candidates
from curator.io.tables import read_table

from .test_roundtrip import server_count

NAME, WS = "restart", "curator"
VARIANTS = 2  # 24 demo groups × 2 = 48 distinct prompts, 4 candidates each
PAUSE_AT = 6  # records the push has reported sent when it is paused


def big_candidates(path: Path) -> list[Candidate]:
    """The demo candidates, each prompt duplicated with a suffix so that every copy is a distinct prompt."""
    from curator.demo import demo_data_dir

    rows = []
    for k in range(VARIANTS):
        for c in load_candidates(demo_data_dir() / "candidates.jsonl"):
            rows.append(dataclasses.replace(c, id=f"{c.id}-v{k}", group=f"{c.group}-v{k}", prompt=f"{c.prompt}\n(variant {k})"))
    path.write_text("".join(json.dumps(dataclasses.asdict(c)) + "\n" for c in rows))
    return rows


def sdk_records(url: str, key: str) -> dict[str, Any]:
    """id → record (with suggestions), through a fresh client: a restart drops the old one's connections."""
    import argilla as rg

    client = rg.Argilla(api_url=url, api_key=key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = client.datasets(name=NAME, workspace=WS)
        return {str(r.id): r for r in ds.records(with_suggestions=True, with_responses=False, with_vectors=False)}


def ranking_suggestion(rec: Any) -> list[str]:
    return next(list(s.value) for s in rec.suggestions if s.question_name == RANKING)


class ProgressWatch:
    """Reads the push's stderr; pauses the process (SIGSTOP) once its bar shows >= ``at`` records sent."""

    BAR = re.compile(rb"push:[^\r\n]*?\| *(\d+)/(\d+) ")

    def __init__(self, proc: subprocess.Popen, at: int) -> None:
        self.proc, self.at = proc, at
        self.buf = bytearray()
        self.paused_at: int | None = None
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        fd = self.proc.stderr.fileno()  # type: ignore[union-attr]
        while chunk := os.read(fd, 4096):
            self.buf += chunk
            if self.paused_at is None:
                sent = [int(m.group(1)) for m in self.BAR.finditer(self.buf[-8192:])]
                if sent and sent[-1] >= self.at:
                    self.proc.send_signal(signal.SIGSTOP)
                    self.paused_at = sent[-1]
                    self.paused.set()

    def text(self) -> str:
        self.thread.join(timeout=10)
        return self.buf.decode("utf-8", "replace")


def stable_count(url: str, key: str) -> int:
    """The record count once it stops moving (a request in flight when the push was paused may still land)."""
    import argilla as rg

    client = rg.Argilla(api_url=url, api_key=key)
    last = -1
    for _ in range(20):
        n = server_count(client, NAME, WS)
        if n == last:
            return n
        last = n
        time.sleep(0.3)
    raise AssertionError(f"the record count on the server kept moving: {last}")


@pytest.mark.argilla
def test_server_restarted_mid_push_then_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    import argilla as rg

    cands = big_candidates(tmp_path / "cands.jsonl")
    groups = list(dict.fromkeys(c.group for c in cands))
    assert len(groups) == 48 and len(cands) == 192
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"id": [c.id for c in cands], "strategy": [c.strategy for c in cands], "group": [c.group for c in cands],
                           "task": [c.task for c in cands], "alignment": rng.random(len(cands))})
    scores.to_parquet(tmp_path / "scores.parquet")
    plans = {p["id"]: p for p in plan_records(cands, spec_for(cands), rank_candidates(read_table(tmp_path / "scores.parquet")))}
    assert len(plans) == 48  # one content-hash id per group

    data_dir = tmp_path / "argilla-data"
    info = serve(data_dir)
    url, key = info.url, info.api_key
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    env.update(ARGILLA_API_URL=url, ARGILLA_API_KEY=key)
    args = ["argilla", "push", str(tmp_path / "cands.jsonl"), "--dataset", NAME, "--scores", str(tmp_path / "scores.parquet"), "--batch-size", "2"]
    proc: subprocess.Popen | None = None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "curator.cli.main", *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        watch = ProgressWatch(proc, PAUSE_AT)
        assert watch.paused.wait(timeout=90), f"the push never reported {PAUSE_AT} records sent: {watch.buf[-2000:].decode('utf-8', 'replace')}"

        # paused part-way: some, not all, records are on the server; remember them with their suggestions
        before = stable_count(url, key)
        assert PAUSE_AT <= before < 48, before
        snapshot = {rid: (dict(r.fields), ranking_suggestion(r)) for rid, r in sdk_records(url, key).items()}
        assert len(snapshot) == before and set(snapshot) <= set(plans)

        # the server goes away under the push, and comes back on the same port with the same data
        stopped = stop(data_dir)
        assert set(stopped) == {"app", "worker", "redis"}
        proc.send_signal(signal.SIGCONT)
        restarted = serve(data_dir, port=info.port)
        assert restarted.url == url and restarted.pids["app"] != info.pids["app"]

        rc = proc.wait(timeout=120)
        out, err = proc.stdout.read().decode(), watch.text()  # type: ignore[union-attr]
        assert key not in out + err
        assert "Traceback" not in err
        errors = re.findall(r"error: [^\r\n]*", err)
        lines = [ln for ln in re.split(r"[\r\n]+", err) if ln.strip() and not re.match(r"(push|connect):", ln)]
        if rc == 0:  # the retries outlasted the restart
            assert errors == [] and lines == [], err[-3000:]
            assert "pushed 48 records to curator/restart (48 new, 0 updated) — dataset created" in out, out
        else:  # the retries ran out while the server was down: exit 1 and one clear line
            assert rc == 1, (rc, out, err[-3000:])
            # one error message, on one line (it may follow an unfinished progress bar: see test_cli_argilla's xfail)
            assert len(errors) == 1 and all(ln.startswith("error: ") for ln in lines) and len(lines) <= 1, err[-3000:]
            assert f"cannot reach the Argilla server at {url}" in errors[0] and "rerunning is safe" in errors[0], errors[0]
        print(f"first push {'completed through its retries' if rc == 0 else 'gave up: ' + errors[0]}")

        # the records sent before the restart survived it, suggestions included
        after_restart = sdk_records(url, key)
        assert set(snapshot) <= set(after_restart) and set(after_restart) <= set(plans)
        for rid, (fields, suggestion) in snapshot.items():
            assert dict(after_restart[rid].fields) == fields == plans[rid]["fields"]
            assert ranking_suggestion(after_restart[rid]) == suggestion == plans[rid]["suggestions"][0]["value"]
        there = len(after_restart)
        assert server_count(rg.Argilla(api_url=url, api_key=key), NAME, WS) == there

        # the rerun completes; it creates exactly what was missing
        r = CliRunner().invoke(cli, ["-q", *args], env={"ARGILLA_API_URL": url, "ARGILLA_API_KEY": key})
        assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
        assert key not in r.stdout + r.stderr
        assert f"pushed 48 records to curator/restart ({48 - there} new, {there} updated)" in r.stdout, r.stdout

        # counted on the server: exactly one record per group, the expected ids, the pushed content
        final = sdk_records(url, key)
        assert server_count(rg.Argilla(api_url=url, api_key=key), NAME, WS) == 48
        assert set(final) == set(plans)
        for rid, rec in final.items():
            assert dict(rec.fields) == plans[rid]["fields"]
            assert {k: rec.metadata.get(k) for k in plans[rid]["metadata"]} == plans[rid]["metadata"]
            assert ranking_suggestion(rec) == plans[rid]["suggestions"][0]["value"]
        assert {rec.metadata["group"] for rec in final.values()} == set(groups)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)
        stop(data_dir)
