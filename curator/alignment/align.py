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

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from curator.alignment.similarity import Embedder, HiddenStates, non_empty, score_alignment
from curator.config import DeviceConfig, ProgressFn, no_progress
from curator.io.data import Candidate, Prompt, load_candidates, prompt_text
from curator.errors import InputError
from curator.alignment.metrics import ALIGNMENT_METRICS, ALL_METRICS
from curator.alignment.likelihood import perplexity, self_aligned_perplexity
from curator.distributed.group import Group, join
from curator.distributed.split import balanced_ranges
from curator.model.device import model_device
from curator.model.models import LoadedModel, load_model
from curator.io.stats import zscore
from curator.model.sampling import SamplingConfig, SamplingStats, cache_key, cached_keys, merge_caches, sample_outputs
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
    rank: int = 0  # this process's rank in a torchrun job (rank 0 holds the job's table)
    world: int = 1


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


def group_prompts(cands: Sequence[Candidate]) -> dict[str, Prompt]:
    """Each prompt group's prompt, in the order the groups first appear."""
    prompts: dict[str, Prompt] = {}
    for c in cands:
        prompts.setdefault(c.group, c.prompt)
    return prompts


def score_candidates(cands: list[Candidate], loaded: LoadedModel, config: AlignConfig, cache: Path | None = None, progress: ProgressFn = no_progress, all_prompts: dict[str, Prompt] | None = None, combine: bool = True) -> AlignResult:
    """Sample from the target model per group, then compute every requested metric per candidate.

    Returns an ``AlignResult``: ``table`` (one row per candidate: id, strategy, group, each metric
    and the combined ``alignment``), the samples cache file, sampling statistics and seconds.
    ``all_prompts`` (one rank's share of a job) are the groups whose samples serve as sappl demos,
    as they would in one process; ``combine=False`` leaves ``alignment`` to the caller, since its
    z-scores are taken over every candidate of the job."""
    start = time.perf_counter()
    prompts = {**(all_prompts or {}), **group_prompts(cands)}
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
    if combine:
        table["alignment"] = combined_alignment(table, align_metrics)
    missing = sorted(g for g in prompts if not kept[g])
    return AlignResult(table, None, cache, stats, empty, missing, time.perf_counter() - start)


def align_file(data: str | Path, out: str | Path, config: AlignConfig, progress: ProgressFn = no_progress, loaded: LoadedModel | None = None) -> AlignResult:
    """Load candidates from ``data``, score them (see ``score_candidates``), write the table to ``out``.

    Returns the ``AlignResult``; the model is loaded from ``config.model`` unless ``loaded`` is given."""
    out_path = check_table_path(out)
    cands = load_candidates(data)
    loaded = loaded or load_model(config.model, config.device)
    with join(model_device(loaded.model).type) as group:
        if group.active:
            return _align_ranks(group, cands, loaded, config, out_path, progress)
        result = score_candidates(cands, loaded, config, samples_path(out_path), progress)
    write_table(result.table, out_path)
    return AlignResult(result.table, out_path, result.samples_file, result.sampling, result.empty_samples, result.groups_without_samples, result.seconds)


# ---------------------------------------------------------------------- a torchrun job


def rank_samples_path(out: Path, rank: int) -> Path:
    """Rank ``rank``'s own sample cache beside the table, merged into the shared one by rank 0."""
    return out.with_name(f"{out.stem}.samples.rank-{rank:05d}.jsonl")


def _merge_rank_samples(out: Path) -> int:
    """Rank 0: fold every rank's sample cache (this job's or a killed one's) into the shared cache."""
    return merge_caches(samples_path(out), sorted(out.parent.glob(f"{out.stem}.samples.rank-*.jsonl")))


def _align_ranks(group: Group, cands: list[Candidate], loaded: LoadedModel, config: AlignConfig, out: Path, progress: ProgressFn) -> AlignResult:
    """One rank's part of ``curator align`` under torchrun; rank 0 writes what one process would.

    1. The ranks agree on settings and candidates; rank 0 folds a killed job's rank caches.
    2. Sampling (the cost): the groups not yet cached are split into contiguous shares balanced by
       sampled tokens; each rank samples its share into its own cache; rank 0 merges them.
    3. Scoring: the candidates are split by group, balanced by tokens, and scored with every
       group's samples (now all cached) available as sappl demos, as in one process.
    4. Rank 0 gathers the tables, restores the candidates' order, takes the combined alignment's
       z-scores over all of them, and writes the table.
    """
    start = time.perf_counter()
    tok = loaded.tokenizer
    ids_hash = hashlib.sha256("\n".join(c.id for c in cands).encode()).hexdigest()
    group.agree("settings", {**asdict(config), "device": None, "model_fingerprint": loaded.fingerprint, "candidates": ids_hash, "n_candidates": len(cands), "out": out.name})
    group.on_rank0(lambda: _merge_rank_samples(out))
    prompts = group_prompts(cands)
    keys = cached_keys(samples_path(out))
    names = list(prompts)
    todo = [g for g in names if cache_key(loaded.fingerprint, prompts[g], config.sampling) not in keys]
    rows = 1 if config.sampling.greedy else config.sampling.k
    lengths = {g: len(tok(prompt_text(prompts[g]), add_special_tokens=False)["input_ids"]) for g in names}
    lo, hi = balanced_ranges([rows * (lengths[g] + config.sampling.max_new_tokens) for g in todo], group.world)[group.rank]
    stats = SamplingStats()
    sample_outputs(loaded, {g: prompts[g] for g in todo[lo:hi]}, config.sampling, rank_samples_path(out, group.rank), progress=progress, stats=stats)
    group.barrier()
    group.on_rank0(lambda: _merge_rank_samples(out))
    by_group: dict[str, list[int]] = {}
    for i, c in enumerate(cands):
        by_group.setdefault(c.group, []).append(i)
    cost = [sum(len(tok(cands[i].response, add_special_tokens=False)["input_ids"]) + lengths[g] for i in by_group[g]) for g in names]
    glo, ghi = balanced_ranges(cost, group.world)[group.rank]
    mine = sorted(i for g in names[glo:ghi] for i in by_group[g])
    if mine:
        part = score_candidates([cands[i] for i in mine], loaded, config, samples_path(out), progress, all_prompts=prompts, combine=False)
    else:  # more ranks than prompt groups: nothing to score here
        part = AlignResult(_empty_table(config), None, None, SamplingStats(), 0, [], 0.0)
    part.table.insert(0, "_pos", mine)
    everyone = group.gather((part.table, stats.generated, part.empty_samples, part.groups_without_samples))
    if not group.is_main:
        return AlignResult(part.table.drop(columns="_pos"), None, samples_path(out), stats, part.empty_samples, part.groups_without_samples, time.perf_counter() - start, group.rank, group.world)
    table = pd.concat([t for t, *_ in everyone if len(t)] or [everyone[0][0]], ignore_index=True).sort_values("_pos", kind="stable").drop(columns="_pos").reset_index(drop=True)
    table["alignment"] = combined_alignment(table, [m for m in config.metrics if m in ALIGNMENT_METRICS])
    write_table(table, out)
    generated = sum(g for _, g, _, _ in everyone)
    empty = _empty_samples(table, config.sampling.k)
    total = SamplingStats(generated=generated, cached=len(names) - generated, empty=empty, seconds=time.perf_counter() - start)
    missing = sorted({g for *_, gone in everyone for g in gone})
    return AlignResult(table, out, samples_path(out), total, empty, missing, time.perf_counter() - start, group.rank, group.world)


def _empty_table(config: AlignConfig) -> pd.DataFrame:
    """The columns ``score_candidates`` writes before the combined score, with no rows."""
    metrics = [m for m in config.metrics if m in ALIGNMENT_METRICS] + [m for m in ("perplexity", "sappl") if m in config.metrics]
    dtypes = {"id": object, "strategy": object, "task": object, "group": object, "n_samples": "int64", **{m: float for m in metrics}}
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})


def _empty_samples(table: pd.DataFrame, k: int) -> int:
    """Empty samples over the job's groups (each group counted once)."""
    per_group = table.drop_duplicates("group")["n_samples"]
    return int((k - per_group).sum())
