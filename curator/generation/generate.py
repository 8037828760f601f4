"""``curator generate``: each strategy's candidates for a file of prompts, resumable, with provenance.

The run, in order:

1. load the prompt rows and the strategies, pick ``per_strategy`` prompts (the same ones for
   every strategy: the first N of a seeded order, so a larger N keeps the smaller one's prompts),
   and refuse any (row, strategy) whose templates name a missing field, all before any request;
2. open the output: settings that differ from the rows already there are refused, and the
   (prompt, strategy) pairs already written or skipped are not generated again;
3. ``model: none`` strategies (``reference``) are written at once; the teacher's and the target's
   requests go to their backends, and each answer becomes a row as it arrives;
4. empty answers, and with ``verify="answer"`` answers whose final answer differs from the
   reference, are counted per strategy and recorded in the sidecar instead of written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curator import __version__
from curator.config import DeviceConfig, ProgressFn, is_int, is_number, no_progress
from curator.errors import InputError
from curator.generation.output import Output
from curator.generation.remote import RemoteBackend, RemoteConfig
from curator.generation.strategies import Strategy, check_rows, resolve
from curator.io.data import PromptRow, content_hash, load_prompts

log = logging.getLogger("curator")
BACKENDS = ("local", "openai")
VERIFY = ("none", "answer")
ON_MISMATCH = ("drop", "flag")
SAVE_SECONDS = 5.0


@dataclass(frozen=True)
class GeneratorSpec:
    """One model that answers requests: ``local`` (a model spec or folder, run here) or ``openai``
    (a served model name at ``remote.base_url``)."""

    backend: str = "local"
    model: str = "smollm2-135m"
    remote: RemoteConfig | None = None
    batch_size: int = 32  # local: prompts per generation batch (one row each: 32 rows per decoding step, as align's 8 prompts x 4 samples)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"backend {self.backend!r} is unknown: use local or openai (--backend)")
        if self.backend == "openai" and self.remote is None:
            raise InputError("the openai backend needs --base-url and --model")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size!r} is invalid: use an integer >= 1")

    def identity(self) -> dict[str, Any]:
        d: dict[str, Any] = {"backend": self.backend, "model": self.remote.model if self.remote else self.model}
        if self.remote is not None:
            d["base_url"] = self.remote.base_url  # recorded, not compared: a server may move
            d["extra_body"] = dict(self.remote.extra_body)
        return d


@dataclass(frozen=True)
class GenerateConfig:
    """Everything that defines a generate run; the settings part is saved in the sidecar."""

    strategies: tuple[str, ...]
    teacher: GeneratorSpec = field(default_factory=GeneratorSpec)
    target: GeneratorSpec = field(default_factory=GeneratorSpec)
    per_strategy: int | None = None
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0
    verify: str = "none"
    on_mismatch: str = "drop"
    device: DeviceConfig | None = None

    def __post_init__(self) -> None:
        if self.per_strategy is not None and (not is_int(self.per_strategy) or self.per_strategy < 1):
            raise InputError(f"--per-strategy {self.per_strategy!r} is invalid: use an integer >= 1 (prompts per strategy), or leave it out for all prompts")
        if not is_number(self.temperature) or self.temperature < 0:
            raise InputError(f"--temperature {self.temperature!r} is invalid: use a number >= 0 (0 = greedy)")
        if not is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise InputError(f"--top-p {self.top_p!r} is invalid: use a number with 0 < top_p <= 1")
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens {self.max_new_tokens!r} is invalid: use an integer >= 1")
        if not is_int(self.seed):
            raise InputError(f"--seed {self.seed!r} is invalid: use an integer")
        if self.verify not in VERIFY:
            raise InputError(f"--verify {self.verify!r} is unknown: use none or answer")
        if self.on_mismatch not in ON_MISMATCH:
            raise InputError(f"--on-mismatch {self.on_mismatch!r} is unknown: use drop or flag")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}

    def settings(self) -> dict[str, Any]:
        return {**self.sampling(), "seed": self.seed, "verify": self.verify, "on_mismatch": self.on_mismatch}


@dataclass
class StrategyCounts:
    """Per strategy: rows ``written`` in this run, rows already ``present`` before it, ``empty``
    answers, answers ``dropped`` or ``flagged`` by ``--verify``, and answers ``truncated`` at
    ``--max-new-tokens`` (reported by the openai backend)."""

    written: int = 0
    present: int = 0
    empty: int = 0
    dropped: int = 0
    flagged: int = 0
    truncated: int = 0


@dataclass
class GenerateResult:
    out: Path
    sidecar: Path
    prompts: int
    selected: int
    strategies: dict[str, StrategyCounts]
    requests: dict[str, dict[str, Any]]
    seconds: float

    @property
    def written(self) -> int:
        return sum(c.written for c in self.strategies.values())


def select_prompts(rows: list[PromptRow], n: int | None, seed: int) -> list[PromptRow]:
    """All rows, or the first ``n`` of a seeded order (file order kept among the picked): a larger
    ``n`` with the same seed picks a superset."""
    if n is None or n >= len(rows):
        return list(rows)
    order = sorted(range(len(rows)), key=lambda i: hashlib.sha256(f"{seed}:{rows[i].id}".encode()).hexdigest())
    keep = set(order[:n])
    return [r for i, r in enumerate(rows) if i in keep]


def _verify(response: str, reference: str | None) -> str:
    """'match', 'mismatch', or 'unverifiable' (no reference, or no answer found in the reference)."""
    from curator.alignment.similarity import extract_answer

    want = extract_answer(reference) if reference else None
    if want is None:
        return "unverifiable"
    return "match" if extract_answer(response) == want else "mismatch"


def _make_backend(spec: GeneratorSpec, device: DeviceConfig | None, loaded_cache: dict[str, Any]) -> Any:
    if spec.remote is not None:  # the openai backend (GeneratorSpec refuses openai without one)
        return RemoteBackend(spec.remote)
    from curator.generation.local import LocalBackend
    from curator.model.models import load_model

    if spec.model not in loaded_cache:
        loaded_cache[spec.model] = load_model(spec.model, device)
    return LocalBackend(loaded_cache[spec.model], spec.batch_size)


def generate_file(prompts: str | Path, out: str | Path, config: GenerateConfig, progress: ProgressFn = no_progress, loaded: Any = None) -> GenerateResult:
    """Generate each strategy's candidates for the prompts in ``prompts`` into ``out`` (JSONL).

    Returns per-strategy counts and the backends' request figures. Reruns continue: only missing
    (prompt, strategy) pairs are generated. Raises ``InputError`` (nothing written) on bad input.
    ``loaded``: a ``LoadedModel`` already in memory, used by the local generators whose model
    is its spec (the demo passes the model it aligns with).
    """
    start = time.perf_counter()
    if int(os.environ.get("WORLD_SIZE") or 1) > 1:
        raise InputError("curator generate runs in one process, not split across torchrun ranks: run it without torchrun; for throughput, raise --concurrency against a server that batches requests (vLLM, TGI), or --batch-size on the local backend")
    out = Path(out)
    rows = load_prompts(prompts)
    strategies = resolve(config.strategies)
    picked = select_prompts(rows, config.per_strategy, config.seed)
    check_rows(strategies, picked)
    if config.verify == "answer" and not any(r.reference for r in picked):
        raise InputError(f"{prompts}: --verify answer compares each answer with the row's reference, and no row has a 'reference': add references, or drop --verify")
    roles = {s.model for s in strategies} - {"none"}
    specs = {"teacher": config.teacher, "target": config.target}
    record: dict[str, Any] = {
        "format_version": 1,
        "tool": f"curator generate {__version__}",
        "settings": config.settings(),
        "generators": {r: specs[r].identity() for r in sorted(roles)},
        "strategies": {s.name: {"template_hash": s.template_hash(), "model": s.model, "source": s.source, "system": s.system, "user": s.user} for s in strategies},
        "skipped": [],
        "runs": [],
    }
    output = Output(out)
    done = output.open(record)
    counts = {s.name: StrategyCounts() for s in strategies}
    todo: dict[str, list[tuple[PromptRow, Strategy]]] = {"none": [], "teacher": [], "target": []}
    for s in strategies:
        for row in picked:
            if (row.id, s.name) in done:
                counts[s.name].present += 1
            else:
                todo[s.model].append((row, s))
    total = sum(len(v) for v in todo.values())
    run: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "prompts": str(prompts), "per_strategy": config.per_strategy, "selected": len(picked), "strategies": [s.name for s in strategies]}
    output.record["runs"].append(run)  # saved by begin(), with the settings
    requests_stats: dict[str, dict[str, Any]] = {}
    state = {"done": 0, "saved": time.monotonic()}

    def provenance(row: PromptRow, s: Strategy) -> dict[str, Any]:
        p: dict[str, Any] = {"strategy_role": s.model, "template_hash": s.template_hash()}
        if s.model != "none":
            gen = specs[s.model].identity()
            p.update({"backend": gen["backend"], "model": gen["model"], "sampling": config.sampling(), "seed": config.seed})
        return p

    def emit(row: PromptRow, s: Strategy, text: str, finish: str | None) -> None:
        c = counts[s.name]
        text = text.strip()
        state["done"] += 1
        progress("rows", state["done"], total)
        if finish == "length":
            c.truncated += 1
        if not text:
            c.empty += 1
            output.skip(row.id, s.name, "empty")
            return
        candidate: dict[str, Any] = {"id": content_hash(row.prompt, text, s.name, row.id), "group": row.id, "prompt": row.prompt, "response": text, "strategy": s.name}
        if row.task is not None:
            candidate["task"] = row.task
        if config.verify == "answer":
            check = _verify(text, row.reference)
            if check == "mismatch" and config.on_mismatch == "drop":
                c.dropped += 1
                output.skip(row.id, s.name, "answer-mismatch")
                return
            c.flagged += int(check == "mismatch")
            candidate["answer_check"] = check
        candidate["provenance"] = provenance(row, s)
        output.append(candidate)
        c.written += 1
        if time.monotonic() - state["saved"] >= SAVE_SECONDS:
            output.save()
            state["saved"] = time.monotonic()

    backends: dict[str, Any] = {}
    try:
        loaded_cache: dict[str, Any] = {loaded.spec: loaded} if loaded is not None else {}
        for role in ("teacher", "target"):  # reach every server and load every model before the first row
            if todo[role]:
                backends[role] = _make_backend(specs[role], config.device, loaded_cache)
                backends[role].check()
        output.begin()
        progress("rows", 0, total)
        for row, s in todo["none"]:
            emit(row, s, s.response(row), None)
        for role, backend in backends.items():
            by_key = {f"{s.name}\t{row.id}": (row, s) for row, s in todo[role]}
            requests = {k: s.request(row) for k, (row, s) in by_key.items()}
            stats = backend.run(requests, config.sampling(), config.seed, lambda k, text, fin: emit(*by_key[k], text, fin), progress=progress if backend.backend == "openai" else no_progress, stage=f"{role} requests")
            requests_stats[role] = {"backend": backend.backend, "model": backend.model, "requests": len(requests), **stats.to_dict()}
    finally:
        for backend in backends.values():
            backend.close()
        run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        run["seconds"] = round(time.perf_counter() - start, 3)
        run["counts"] = {k: asdict(v) for k, v in counts.items()}
        run["requests"] = requests_stats
        output.close()
    return GenerateResult(out, output.sidecar, len(rows), len(picked), counts, requests_stats, time.perf_counter() - start)
