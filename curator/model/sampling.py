"""Sample k outputs from the target model per prompt group (the reference set for alignment).

The alignment score of a candidate (SPPL, "Efficient Response Generation Method Selection for
Fine-Tuning LLMs") is its similarity to outputs the target model itself produces for the prompt.
This module draws those outputs:

- prompts are rendered exactly like the prompt side of ``curator.model.encoding.render``;
- generation runs in left-padded batches with a KV cache; each prompt is prefilled once and its
  cache is repeated for its k sample rows, and rows that hit a stop token leave the batch;
- every row draws its random numbers from its own generator, seeded from (seed, prompt hash,
  sample index), so samples do not depend on how prompts are grouped into batches, and a resumed
  run gives the same samples as a clean one;
- finished prompts are appended to a JSONL cache (fsynced per batch) keyed by model fingerprint,
  prompt and sampling config, so interrupted runs continue and complete reruns generate nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from curator.io.atomic import write_text_atomic
from curator.config import ProgressFn, is_int, is_number, no_progress
from curator.io.data import Prompt, content_hash, prompt_text
from curator.errors import CuratorRuntimeError, InputError
from curator.model.decoding import generate_batch
from curator.model.device import is_out_of_memory, model_device, release_cached_memory
from curator.model.models import LoadedModel

log = logging.getLogger("curator")
FORMAT_VERSION = 1
CHATML_END = "<|im_end|>"
STAGE = "sampling"


@dataclass(frozen=True)
class SamplingConfig:
    """How the target model is sampled. ``batch_size`` (prompts per batch) only affects speed."""

    k: int = 4
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not is_int(self.k) or self.k < 1:
            raise InputError(f"samples k={self.k!r} is invalid: use an integer >= 1 (--samples)")
        if not is_number(self.temperature) or self.temperature < 0:
            raise InputError(f"temperature={self.temperature!r} is invalid: use a number >= 0, where 0 means greedy decoding (--temperature)")
        if not is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise InputError(f"top_p={self.top_p!r} is invalid: use a number with 0 < top_p <= 1 (--top-p)")
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens={self.max_new_tokens!r} is invalid: use an integer >= 1 (--max-new-tokens)")
        if not is_int(self.seed):
            raise InputError(f"seed={self.seed!r} is invalid: use an integer (--seed)")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise InputError(f"batch_size={self.batch_size!r} is invalid: use an integer >= 1 (--sample-batch-size)")
        # 0 and 0.0 must give the same cache key
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """The settings that define the samples (everything but ``batch_size``)."""
        d = asdict(self)
        del d["batch_size"]
        return d


@dataclass
class SamplingStats:
    """What one ``sample_outputs`` call did.

    ``generated``: groups whose samples were generated in this call; ``cached``: groups served from
    the cache file; ``empty``: empty sample strings among all returned samples; ``seconds``: wall time.
    """

    generated: int = 0
    cached: int = 0
    empty: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- prompts and keys


def prompt_text_for_generation(tokenizer: Any, prompt: Prompt) -> str:
    """The prompt as the model sees it before its answer (the prompt side of ``encoding.render``)."""
    if getattr(tokenizer, "chat_template", None):
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return (tokenizer.bos_token or "") + prompt_text(prompt) + "\n"


def cache_key(fingerprint: str, prompt: Prompt, config: SamplingConfig) -> str:
    """sha256 over (format version, model fingerprint, prompt content hash, config minus batch_size)."""
    payload = {"format_version": FORMAT_VERSION, "model": fingerprint, "prompt": content_hash(prompt), "config": config.key_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def row_seed(seed: int, prompt_hash: str, index: int) -> int:
    """The generator seed of sample ``index`` of a prompt: independent of batching and run order."""
    digest = hashlib.sha256(f"{seed}:{prompt_hash}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def stop_token_ids(loaded: LoadedModel) -> set[int]:
    """Token ids that end a sample: the tokenizer's eos, the generation config's eos, and ``<|im_end|>``."""
    tok = loaded.tokenizer
    ids: set[int] = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen_eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    for v in gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]:
        if v is not None:
            ids.add(int(v))
    vocab = tok.get_vocab()
    if CHATML_END in vocab:
        ids.add(int(vocab[CHATML_END]))
    return ids


# --------------------------------------------------------------------------- cache file


def _load_cache(path: Path) -> dict[str, list[str]]:
    """Valid entries of the cache file by key; a torn or invalid line is dropped and the file repaired."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        write_text_atomic(path, json.dumps({"format_version": FORMAT_VERSION}) + "\n")
        return {}
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = None
    if not (isinstance(header, dict) and "format_version" in header):
        if header is None and len(lines) == 1:  # a torn header: nothing was cached yet
            write_text_atomic(path, json.dumps({"format_version": FORMAT_VERSION}) + "\n")
            return {}
        raise InputError(f"{path}: not a curator sampling cache (its first line is not a {{\"format_version\": ...}} header): delete the file or choose another --out name (the cache is <out name>.samples.jsonl)")
    dirty = header.get("format_version") != FORMAT_VERSION or not raw.endswith(b"\n")
    entries: dict[str, list[str]] = {}
    kept: list[str] = []
    if header.get("format_version") == FORMAT_VERSION:
        for line in lines[1:]:
            try:
                obj = json.loads(line)
            except ValueError:  # a torn last line from an interrupted run
                dirty = True
                continue
            samples = obj.get("samples") if isinstance(obj, dict) else None
            if not (isinstance(obj.get("key"), str) and isinstance(samples, list) and all(isinstance(s, str) for s in samples)):
                dirty = True
                continue
            entries[obj["key"]] = samples
            kept.append(line.decode("utf-8"))
    if dirty:
        write_text_atomic(path, "".join(x + "\n" for x in [json.dumps({"format_version": FORMAT_VERSION}), *kept]))
    return entries


def _append(path: Path, lines: list[dict[str, Any]]) -> None:
    """Append entries and make them durable before reporting progress."""
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", encoding="utf-8") as fh:
        if new:
            fh.write(json.dumps({"format_version": FORMAT_VERSION}) + "\n")
        fh.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
        fh.flush()
        os.fsync(fh.fileno())


def cached_keys(path: Path) -> set[str]:
    """The keys a cache file holds (repairing a torn last line, as a run would)."""
    return set(_load_cache(path))


def merge_caches(main: Path, others: list[Path]) -> int:
    """Append the entries of ``others`` (the caches of a torchrun job's ranks) that ``main`` lacks,
    then delete them; returns the entries added. A kill mid-merge leaves each entry in ``main``
    or in its own file, never lost; entries already merged are not added twice."""
    have = set(_load_cache(main))
    added = 0
    for f in others:
        _load_cache(f)  # drops a torn last line
        lines = [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines()[1:] if x.strip()] if f.exists() else []
        new = [x for x in lines if x["key"] not in have]
        if new:
            _append(main, new)
            have.update(x["key"] for x in new)
            added += len(new)
        f.unlink(missing_ok=True)
    return added


# --------------------------------------------------------------------------- entry point


@dataclass
class _Pending:
    key: str
    prompt_hash: str
    ids: list[int]
    groups: list[str]


def sample_outputs(
    loaded: LoadedModel,
    prompts: dict[str, Prompt],
    config: SamplingConfig,
    cache_path: str | Path | None = None,
    progress: ProgressFn = no_progress,
    stats: SamplingStats | None = None,
    on_batch: Callable[[dict[str, list[str]]], None] | None = None,
    stage: str = STAGE,
) -> dict[str, list[str]]:
    """Exactly ``config.k`` samples (assistant text, special tokens stripped, trimmed) per group id.

    An empty string means the model produced nothing. With ``cache_path``, finished prompts are
    appended to that JSONL file after every batch and reused by later calls; pass ``stats`` to
    learn how many groups were generated or cached. Progress is reported as (``stage``, done, total)
    in groups. ``on_batch`` receives each generated batch's samples by group as soon as the batch
    is done (``curator generate`` writes its rows from it, so a kill loses at most one batch).
    """
    start = time.perf_counter()
    tok, model = loaded.tokenizer, loaded.model
    path = Path(cache_path) if cache_path is not None else None
    if path is not None:
        if path.is_dir():
            raise InputError(f"{path}: the sampling cache path is a directory: pass a file path, e.g. {path / 'samples.jsonl'}")
        path.parent.mkdir(parents=True, exist_ok=True)
    cached = _load_cache(path) if path is not None else {}
    result: dict[str, list[str]] = {}
    pending: dict[str, _Pending] = {}
    max_pos = getattr(model.config, "max_position_embeddings", None)
    for group, prompt in prompts.items():
        key = cache_key(loaded.fingerprint, prompt, config)
        hit = cached.get(key)
        if hit is not None and len(hit) == config.k:
            result[group] = list(hit)
            continue
        if key in pending:
            pending[key].groups.append(group)
            continue
        ids = tok(prompt_text_for_generation(tok, prompt), add_special_tokens=False)["input_ids"]
        if not ids:
            raise InputError(f"group {group!r}: the prompt renders to no tokens: give the group a non-empty prompt")
        if max_pos and len(ids) + config.max_new_tokens > max_pos:
            ids = ids[len(ids) - max(1, max_pos - config.max_new_tokens) :]  # keep the end, where the question is
        pending[key] = _Pending(key, content_hash(prompt), list(ids), [group])
    n_cached = len(result)
    total = len(prompts)
    progress(stage, n_cached, total)
    todo = sorted(pending.values(), key=lambda p: len(p.ids))  # similar lengths share a batch: less padding
    rows = 1 if config.greedy else config.k  # greedy rows of one prompt are identical
    stop_ids = stop_token_ids(loaded)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else next(iter(stop_ids))
    was_training = model.training
    model.eval()
    done = n_cached
    device = model_device(model)
    cap = config.batch_size  # lowered by an out-of-memory error: samples do not depend on the batching
    said = False
    queue = deque(todo[lo : lo + config.batch_size] for lo in range(0, len(todo), config.batch_size))
    try:
        while queue:
            batch = queue.popleft()
            if len(batch) > cap:
                queue.extendleft(reversed([batch[lo : lo + cap] for lo in range(0, len(batch), cap)]))
                continue
            seeds = [[row_seed(config.seed, p.prompt_hash, j) for j in range(rows)] for p in batch]
            out = None
            try:
                out = generate_batch(model, [p.ids for p in batch], seeds, config, stop_ids, pad_id)
            except Exception as exc:  # noqa: BLE001 (only a device OOM is handled; the rest re-raised)
                if not is_out_of_memory(exc):
                    raise
            if out is None:  # out of memory: halve the batch and retry, once its tensors are freed
                release_cached_memory(device)
                if len(batch) == 1:
                    raise CuratorRuntimeError(f"sampling one prompt ({len(batch[0].ids)} tokens, {rows} row(s), up to {config.max_new_tokens} new tokens) does not fit in {device} memory: lower --samples or --max-new-tokens")
                cap = (len(batch) + 1) // 2
                if not said:
                    said = True
                    log.warning("out of memory on %s sampling %d prompts at once: halving the batch to %d and retrying (later batches stay under that)", device, len(batch), cap)
                queue.appendleft(batch[cap:])
                queue.appendleft(batch[:cap])
                continue
            lines = []
            for p, per_row in zip(batch, out):
                texts = [tok.decode(r, skip_special_tokens=True).strip() for r in per_row]
                texts = texts * config.k if rows == 1 else texts
                for g in p.groups:
                    result[g] = list(texts)
                    lines.append({"key": p.key, "group": g, "samples": texts})
            if path is not None:
                _append(path, lines)
            if on_batch is not None:
                on_batch({x["group"]: x["samples"] for x in lines})
            done += len(lines)
            progress(stage, done, total)
    finally:
        model.train(was_training)
    ordered = {g: result[g] for g in prompts}
    if stats is not None:
        stats.generated = total - n_cached
        stats.cached = n_cached
        stats.empty = sum(1 for s in ordered.values() for x in s if not x)
        stats.seconds = time.perf_counter() - start
    return ordered
