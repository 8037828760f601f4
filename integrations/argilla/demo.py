"""`curator demo --argilla`: the whole annotation loop on the bundled data.

After the demo's two signals are computed, a local Argilla is served (or reused) and the demo's
candidates are pushed with the demo's ranking (alignment + influence) as suggestions and the
candidates' gradient store as record vectors, so annotators can start ranking at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from curator.config import ProgressFn, no_progress
from curator.io.data import load_candidates
from curator.demo import DemoResult, demo_data_dir
from curator.integrations.argilla.client import connect
from curator.integrations.argilla.push import PushResult, push
from curator.integrations.argilla.server import ServerInfo, serve
from curator.curation.ranking import rank_candidates
from curator.store.store import GradientStore
from curator.io.tables import read_table


@dataclass(frozen=True)
class ArgillaDemo:
    server: ServerInfo
    push: PushResult


def push_demo(result: DemoResult, data_dir: str | Path, dataset: str = "curator-demo", say: Callable[[str], None] | None = None, progress: ProgressFn = no_progress) -> ArgillaDemo:
    """Serve a local Argilla under ``data_dir`` and push the demo's candidates, ranked by both signals."""
    wanted = {r for r in read_table(result.influence)["id"]}
    cands = [c for c in load_candidates(demo_data_dir() / "candidates.jsonl") if c.id in wanted]
    scores = read_table(result.scores) if result.scores is not None else None
    influence = read_table(result.influence)
    base = scores if scores is not None else influence[["id", "strategy", "task", "group"]]
    ranking = rank_candidates(base, influence)
    info = serve(Path(data_dir), progress=say)
    client: Any = connect(api_url=info.url, api_key=info.api_key)
    pushed = push(cands, ranking, dataset, store=GradientStore.open(result.out / "train_store"), client=client, progress=progress)
    return ArgillaDemo(info, pushed)
