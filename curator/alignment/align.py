"""`curator align`: score every candidate by how closely it matches the target model's own outputs.

For each prompt group, k outputs are sampled from the target model (cached next to the output
file). Each candidate then gets every requested metric:

- alignment metrics (higher = closer to what the model itself would say): ``embedding``,
  ``hidden``, ``rouge-l``, ``token-f1``, ``answer`` (see ``curator.alignment.similarity``);
- likelihood metrics (lower = better), for comparison: ``perplexity`` and ``sappl``
  (self-aligned perplexity; see ``curator.alignment.likelihood``);

plus ``alignment``: the mean of the z-scores (across all candidates) of the requested alignment
metrics, so metrics on different scales count equally. Likelihood metrics are not part of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from curator.alignment.similarity import Embedder, HiddenStates, non_empty, score_alignment
from curator.config import DeviceConfig, ProgressFn, no_progress
from curator.io.data import Candidate, Prompt, load_candidates
from curator.errors import InputError
from curator.alignment.metrics import ALIGNMENT_METRICS, ALL_METRICS
from curator.alignment.likelihood import perplexity, self_aligned_perplexity
from curator.model.models import LoadedModel, load_model
from curator.io.stats import zscore
from curator.model.sampling import SamplingConfig, SamplingStats, sample_outputs
from curator.io.tables import check_table_path, write_table

DEFAULT_METRICS = ALL_METRICS


@dataclass(frozen=True)
class AlignConfig:
    model: str = "smollm2-135m"
    metrics: tuple[str, ...] = DEFAULT_METRICS
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_length: int = 512
    n_demos: int = 2
    batch_size: int = 8
    device: DeviceConfig = field(default_factory=DeviceConfig)  # where the model runs (curator.model.device)

    def __post_init__(self) -> None:
        if not self.metrics:
            raise InputError("no metric requested: pass --metrics with at least one of " + ", ".join(DEFAULT_METRICS))
        if self.n_demos < 0:
            raise InputError(f"--n-demos {self.n_demos} is invalid: use an integer >= 0")
        if self.max_length < 8:
            raise InputError(f"--max-length {self.max_length} is too small: use at least 8")


@dataclass(frozen=True)
class AlignResult:
    table: pd.DataFrame
    out: Path | None
    samples_file: Path | None
    sampling: SamplingStats
    empty_samples: int
    groups_without_samples: list[str]
    seconds: float


def samples_path(out: str | Path) -> Path:
    """The sample cache next to an output table: ``scores.parquet`` → ``scores.samples.jsonl``."""
    p = Path(out)
    return p.with_name(f"{p.stem}.samples.jsonl")


def combined_alignment(table: pd.DataFrame, metrics: list[str]) -> np.ndarray:
    """Mean z-score of the given alignment metrics per row; NaN where a row has none of them."""
    cols = [m for m in metrics if m in ALIGNMENT_METRICS and m in table.columns]
    if not cols:
        return np.full(len(table), np.nan)
    zs = []
    for m in cols:
        x = pd.to_numeric(table[m], errors="coerce").to_numpy(dtype=float)
        z = zscore(x)
        z[~np.isfinite(x)] = np.nan
        zs.append(z)
    stacked = np.vstack(zs)
    counts = np.isfinite(stacked).sum(axis=0)
    sums = np.nansum(stacked, axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def score_candidates(cands: list[Candidate], loaded: LoadedModel, config: AlignConfig, cache: Path | None = None, progress: ProgressFn = no_progress) -> AlignResult:
    """Sample from the target model per group, then compute every requested metric per candidate.

    Returns an ``AlignResult``: ``table`` (one row per candidate: id, strategy, group, each metric
    and the combined ``alignment``), the samples cache file, sampling statistics and seconds."""
    start = time.perf_counter()
    prompts: dict[str, Prompt] = {}
    for c in cands:
        prompts.setdefault(c.group, c.prompt)
    stats = SamplingStats()
    samples = sample_outputs(loaded, prompts, config.sampling, cache, progress=progress, stats=stats)
    kept = {g: non_empty(s) for g, s in samples.items()}
    empty = sum(len(s) - len(kept[g]) for g, s in samples.items())
    table = pd.DataFrame({
        "id": [c.id for c in cands],
        "strategy": [c.strategy for c in cands],
        "task": [c.task for c in cands],
        "group": [c.group for c in cands],
        "n_samples": [len(kept[c.group]) for c in cands],
    })
    align_metrics = [m for m in config.metrics if m in ALIGNMENT_METRICS]
    if align_metrics:
        progress("alignment", 0, 1)
        hidden = HiddenStates(loaded, max_length=config.max_length, batch_size=config.batch_size) if "hidden" in align_metrics else None
        embedder = Embedder() if "embedding" in align_metrics else None
        scores = score_alignment(align_metrics, [c.response for c in cands], [kept[c.group] for c in cands], embedder=embedder, hidden=hidden)
        for m in align_metrics:
            table[m] = [np.nan if v is None else float(v) for v in scores[m]]
        progress("alignment", 1, 1)
    p_list, r_list = [c.prompt for c in cands], [c.response for c in cands]
    if "perplexity" in config.metrics:
        progress("perplexity", 0, 1)
        table["perplexity"] = perplexity(loaded, p_list, r_list, max_length=config.max_length, batch_size=config.batch_size)
        progress("perplexity", 1, 1)
    if "sappl" in config.metrics:
        progress("self-aligned perplexity", 0, 1)
        demos = [(prompts[g], kept[g][0]) for g in prompts if kept[g]]
        table["sappl"] = self_aligned_perplexity(loaded, p_list, r_list, demos, n_demos=config.n_demos, max_length=config.max_length, batch_size=config.batch_size)
        progress("self-aligned perplexity", 1, 1)
    table["alignment"] = combined_alignment(table, align_metrics)
    missing = sorted(g for g in prompts if not kept[g])
    return AlignResult(table, None, cache, stats, empty, missing, time.perf_counter() - start)


def align_file(data: str | Path, out: str | Path, config: AlignConfig, progress: ProgressFn = no_progress, loaded: LoadedModel | None = None) -> AlignResult:
    """Load candidates from ``data``, score them (see ``score_candidates``), write the table to ``out``.

    Returns the ``AlignResult``; the model is loaded from ``config.model`` unless ``loaded`` is given."""
    out_path = check_table_path(out)
    cands = load_candidates(data)
    loaded = loaded or load_model(config.model, config.device)
    result = score_candidates(cands, loaded, config, samples_path(out_path), progress)
    write_table(result.table, out_path)
    return AlignResult(result.table, out_path, result.samples_file, result.sampling, result.empty_samples, result.groups_without_samples, result.seconds)
