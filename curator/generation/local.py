"""The ``local`` backend: a transformers model on this machine, through curator's sampling loop.

Generation is ``curator.model.sampling.sample_outputs`` with one sample per request: batched,
with a KV cache, on the device the user chose, with the out-of-memory back-off, and seeded per
row from (seed, request content), so a row's text does not depend on its batch or on the run
that made it. Rows reach the caller batch by batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from curator.config import ProgressFn, no_progress
from curator.io.data import Message
from curator.model.models import LoadedModel
from curator.model.sampling import SamplingConfig, SamplingStats, sample_outputs


@dataclass
class LocalStats:
    generated: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"generated": self.generated, "seconds": self.seconds}


class LocalBackend:
    """Generates with a loaded model; ``batch_size`` prompts per batch (speed only)."""

    backend = "local"

    def __init__(self, loaded: LoadedModel, batch_size: int = 32) -> None:
        self.loaded = loaded
        self.model = loaded.spec
        self.batch_size = batch_size

    def check(self) -> None:
        """Nothing to reach: the model is loaded."""

    def close(self) -> None:
        """The model stays loaded for the caller."""

    def run(
        self,
        requests: dict[str, list[Message]],
        sampling: dict[str, Any],
        seed: int,
        on_result: Callable[[str, str, str | None], None],
        progress: ProgressFn = no_progress,
        stage: str = "generate",
    ) -> LocalStats:
        """Generate one answer per request; ``on_result(key, text, None)`` runs after each batch."""
        config = SamplingConfig(k=1, temperature=sampling["temperature"], top_p=sampling["top_p"], max_new_tokens=sampling["max_new_tokens"], seed=seed, batch_size=self.batch_size)
        start = time.perf_counter()
        stats = SamplingStats()

        def hand_over(batch: dict[str, list[str]]) -> None:
            for key, texts in batch.items():
                on_result(key, texts[0], None)

        sample_outputs(self.loaded, dict(requests), config, progress=progress, stats=stats, on_batch=hand_over, stage=stage)
        return LocalStats(generated=stats.generated, seconds=time.perf_counter() - start)
