"""Candidates ↔ an Argilla dataset: the settings, one record per prompt group, and back.

**Dataset settings** (N = the largest group's size)::

    fields     prompt (ChatField when a prompt is a chat, else TextField), candidate_1..candidate_N
               (TextField, markdown; a slot a smaller group lacks shows a placeholder)
    questions  ranking (RankingQuestion over the slots, required), best_strategy (LabelQuestion
               over the strategies, required), comment (TextQuestion, optional)
    metadata   alignment_i, influence_i, score_i (float; per slot), strategy_i (terms; per slot),
               task, predicted_best_strategy (terms), and hidden from annotators: candidate_id_i,
               group, model_fingerprint (terms)
    vectors    gradient (dims = min(vector_dim, store dim)), only with a gradient store
    allow_extra_metadata = False

**Slot → candidate.** A group's candidates fill the slots in the order of the dataset's strategy
labels (then by id), so a strategy keeps its slot from record to record. The candidate id of each
slot is kept in the record's hidden terms metadata ``candidate_id_i``; pull reads the mapping from
there. The record id is a content hash of the prompt and the candidate ids *in slot order*, so a
re-push of the same group updates the record in place, and a group whose slots would change gets
a new record instead of silently re-labelling the rankings annotators already gave.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Iterable

import numpy as np
import pandas as pd

from curator import __version__
from curator.io.data import Candidate, content_hash
from curator.errors import InputError, MismatchError
from curator.curation.ranking import RankingWeights

PROMPT = "prompt"
SLOT = "candidate_"
RANKING = "ranking"
BEST = "best_strategy"
COMMENT = "comment"
VECTOR = "gradient"
AGENT = f"curator/{__version__}"
MAX_VECTOR_DIM = 4096  # Elasticsearch's cap on dense vectors
MAX_NAME = 200  # argilla-server's limit on dataset names and label values
EMPTY_SLOT = "_(empty slot: this prompt has fewer candidates than the others; rank it last)_"
SLOT_FLOATS = ("alignment", "influence", "score")


class DatasetMismatchError(MismatchError):
    """An existing Argilla dataset's settings do not fit this push (exit code 2)."""


def slot(i: int) -> str:
    return f"{SLOT}{i}"


@dataclass(frozen=True)
class DatasetSpec:
    """What a curator dataset's settings must hold; built from the candidates (and the store)."""

    chat: bool
    n_slots: int
    strategies: tuple[str, ...]
    vector_dim: int | None = None
    weights: RankingWeights = RankingWeights()

    def metadata(self) -> dict[str, tuple[str, bool]]:
        """name → (type, visible to annotators)."""
        out: dict[str, tuple[str, bool]] = {}
        for i in range(1, self.n_slots + 1):
            out.update({f"{k}_{i}": ("float", True) for k in SLOT_FLOATS})
            out[f"strategy_{i}"] = ("terms", True)
            out[f"candidate_id_{i}"] = ("terms", False)
        out.update(task=("terms", True), predicted_best_strategy=("terms", True), group=("terms", False), model_fingerprint=("terms", False))
        return out


def check_name(what: str, name: Any, fix: str, typed: bool = True) -> str:
    """An Argilla name (dataset, workspace, strategy label) the server accepts and one line can show.

    ``typed`` names (dataset, workspace: what users type and look up again) may not start or end with spaces either.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{what} name {name!r} is empty: {fix}")
    if len(name) > MAX_NAME:
        raise InputError(f"{what} name {name[:40]!r}... is {len(name)} characters long, Argilla takes at most {MAX_NAME}: {fix}")
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in name):
        raise InputError(f"{what} name {name!r} has control characters: {fix}")
    if typed and name != name.strip():
        raise InputError(f"{what} name {name!r} starts or ends with spaces: {fix}")
    return name


def spec_for(candidates: list[Candidate], vector_dim: int | None = None, store_dim: int | None = None, weights: RankingWeights = RankingWeights()) -> DatasetSpec:
    """The spec for ``candidates``: chat if any prompt is a chat, N = the largest group."""
    if not candidates:
        raise InputError("no candidates to push: give a candidates file with at least one row")
    sizes: dict[str, int] = {}
    for c in candidates:
        sizes[c.group] = sizes.get(c.group, 0) + 1
    strategies = tuple(check_name("strategy", s, "rename the strategy in the candidates file (it becomes an Argilla label)", typed=False) for s in dict.fromkeys(c.strategy for c in candidates))
    dim = None
    if store_dim is not None:
        want = 256 if vector_dim is None else vector_dim
        if not 2 <= want <= MAX_VECTOR_DIM:
            raise InputError(f"vector dim {want} is invalid: use 2..{MAX_VECTOR_DIM} (Elasticsearch caps dense vectors at {MAX_VECTOR_DIM})")
        dim = min(want, store_dim)
    return DatasetSpec(any(isinstance(c.prompt, list) for c in candidates), max(sizes.values()), strategies, dim, weights)


# --------------------------------------------------------------------------- settings


def guidelines(spec: DatasetSpec) -> str:
    w = spec.weights
    return f"""## Rank the candidate responses

Each record is one prompt with up to {spec.n_slots} candidate responses, each made by a generation
strategy ({', '.join(spec.strategies)}). **Rank the candidates from best (1) to worst** as answers you
would want a model to learn from, pick the **best strategy** for this prompt, and add a comment if useful.
The ranking is pre-filled with curator's suggestion: change it wherever you disagree. Ties are allowed.
An empty slot (a prompt with fewer candidates) goes last.

## What the scores mean (metadata, per slot i)
- **alignment_i**: how close candidate i is to the target model's own answers to this prompt (mean
  similarity to k samples from the model). Aligned responses are easier for the model to learn.
- **influence_i**: gradient similarity of candidate i to the eval tasks: how much training on it is
  expected to lower the eval loss (LESS-style, cosine of projected LoRA gradients).
- **score_i**: the combined score used for the suggestion: {w.alignment:g} × z(alignment) + {w.influence:g} × z(influence),
  each signal z-scored over all candidates (a missing signal counts as 0).
- **strategy_i**: the strategy that made candidate i; **predicted_best_strategy**: the strategy of
  curator's top candidate; **task**: the eval task of the prompt.

The scores are hints, not answers: judge correctness and helpfulness first. Use *Find similar*
(the gradient vector) to see prompts whose candidates pull the model in the same direction.
"""


def settings_for(spec: DatasetSpec, client: Any) -> Any:
    """The ``rg.Settings`` for ``spec`` (``client`` is the SDK client the properties bind to)."""
    import argilla as rg

    prompt_field = rg.ChatField(name=PROMPT, title="Prompt", required=True, _client=client) if spec.chat else rg.TextField(name=PROMPT, title="Prompt", use_markdown=True, required=True, client=client)
    fields = [prompt_field] + [rg.TextField(name=slot(i), title=f"Candidate {i}", use_markdown=True, required=(i == 1), client=client) for i in range(1, spec.n_slots + 1)]
    questions = [
        rg.RankingQuestion(name=RANKING, title="Rank the candidates, best first", values={slot(i): f"Candidate {i}" for i in range(1, spec.n_slots + 1)},
                           description="1 = best. Ties allowed. Pre-filled with curator's ranking.", required=True, client=client),
        rg.LabelQuestion(name=BEST, title="Best strategy for this prompt", labels={s: s for s in spec.strategies}, required=True, client=client),
        rg.TextQuestion(name=COMMENT, title="Comment (optional)", required=False, use_markdown=False, client=client),
    ]
    metadata = []
    for name, (kind, visible) in spec.metadata().items():
        cls = rg.FloatMetadataProperty if kind == "float" else rg.TermsMetadataProperty
        metadata.append(cls(name=name, title=name, visible_for_annotators=visible, client=client))
    vectors = [rg.VectorField(name=VECTOR, title="Gradient direction", dimensions=spec.vector_dim, _client=client)] if spec.vector_dim else []
    return rg.Settings(fields=fields, questions=questions, metadata=metadata, vectors=vectors, guidelines=guidelines(spec), allow_extra_metadata=False)


def describe(settings: Any) -> dict[str, Any]:
    """A plain summary of (server) settings: field/question/metadata types, options, vector dims."""
    def kind(p: Any) -> str:
        return str(getattr(p, "type", None) or getattr(getattr(p, "_model", None), "type", "") or type(p).__name__).lower()

    questions = {}
    for q in settings.questions:
        opts = getattr(q, "values", None) if kind(q) == "ranking" else getattr(q, "labels", None)
        questions[q.name] = (kind(q), list(opts) if opts is not None else None)
    return {
        "fields": {f.name: kind(f) for f in settings.fields},
        "questions": questions,
        "metadata": {m.name: kind(m) for m in settings.metadata},
        "vectors": {v.name: int(v.dimensions) for v in settings.vectors},
    }


def check_compatible(existing: dict[str, Any], spec: DatasetSpec, name: str) -> DatasetSpec:
    """Refuse an existing dataset (``describe`` form) that cannot take this push; return the spec to use.

    The returned spec takes the dataset's strategy label order, so slots stay where they were.
    """
    fix = "push to a new --dataset name"
    fields = existing["fields"]
    want_prompt = "chat" if spec.chat else "text"
    if fields.get(PROMPT) != want_prompt:
        have = f"a {fields[PROMPT]} field" if PROMPT in fields else "no field"
        raise DatasetMismatchError(f"dataset {name!r} has {have} '{PROMPT}', this push needs a {want_prompt} field: {fix}")
    q = existing["questions"]
    n_have = len(q[RANKING][1] or []) if RANKING in q and q[RANKING][0] == "ranking" else None
    if n_have != spec.n_slots:
        have = f"question '{RANKING}' with {n_have} options" if n_have is not None else f"no ranking question '{RANKING}'"
        raise DatasetMismatchError(f"dataset {name!r} has {have}, this push needs {spec.n_slots}: {fix}")
    for i in range(1, spec.n_slots + 1):
        if fields.get(slot(i)) != "text":
            raise DatasetMismatchError(f"dataset {name!r} has no text field '{slot(i)}': {fix}")
    if BEST not in q or q[BEST][0] != "label_selection":
        raise DatasetMismatchError(f"dataset {name!r} has no label question '{BEST}': {fix}")
    labels = list(q[BEST][1] or [])
    missing = [s for s in spec.strategies if s not in labels]
    if missing:
        raise DatasetMismatchError(f"dataset {name!r} has question '{BEST}' with strategies {labels}, this push also needs {missing}: {fix}")
    for meta, (kind, _) in spec.metadata().items():
        have = existing["metadata"].get(meta)
        if have != kind:
            raise DatasetMismatchError(f"dataset {name!r} has {'no' if have is None else 'a ' + have} metadata property '{meta}', this push needs a {kind} one: {fix}")
    if spec.vector_dim is not None:
        have_dim = existing["vectors"].get(VECTOR)
        if have_dim != spec.vector_dim:
            have = f"vector '{VECTOR}' with {have_dim} dimensions" if have_dim else f"no vector '{VECTOR}'"
            raise DatasetMismatchError(f"dataset {name!r} has {have}, this push needs {spec.vector_dim}: {fix}, or match --vector-dim")
    return replace(spec, strategies=tuple(labels))


# --------------------------------------------------------------------------- vectors


@lru_cache(maxsize=4)
def _signs(seed: int, n_in: int, n_out: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, n_in, n_out])))
    return (rng.integers(0, 2, size=(n_in, n_out), dtype=np.int8) * 2 - 1).astype(np.float32)


def reduce_vector(vec: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """Seeded Rademacher projection (±1/√dim) of ``vec`` to ``dim`` dims, L2-normalised.

    A vector of ``dim`` or fewer dims is only normalised. A zero vector stays zero.
    """
    v = np.asarray(vec, dtype=np.float32).ravel()
    if v.size > dim:
        v = (v @ _signs(seed, v.size, dim)) / np.float32(math.sqrt(dim))
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def group_vectors(groups: dict[str, list[Candidate]], store: Any, dim: int, seed: int = 0) -> dict[str, list[float]]:
    """group → the mean of its candidates' store vectors, reduced to ``dim`` and normalised."""
    role = store.manifest.get("role")
    if role not in (None, "candidates"):
        raise InputError(f"{store.path}: a gradient store of {role} rows: pass the store built from the candidates (curator index CANDIDATES)")
    ids = store.ids()
    row = {cid: k for k, cid in enumerate(ids)}
    wanted = [c.id for cs in groups.values() for c in cs]
    missing = [cid for cid in wanted if cid not in row]
    if missing:
        raise InputError(f"{store.path}: {len(missing)} of {len(wanted)} candidates are not in the gradient store (e.g. {missing[0]!r}): index the same candidates file with `curator index`")
    vecs = store.vectors()
    out = {}
    for g, cs in groups.items():
        mean = vecs[[row[c.id] for c in cs]].mean(axis=0)
        v = reduce_vector(mean, dim, seed)
        if np.linalg.norm(v) > 0:
            out[g] = [float(x) for x in v]
    return out


# --------------------------------------------------------------------------- records


def _ranking_table(ranking: pd.DataFrame | None, candidates: list[Candidate]) -> dict[str, dict[str, Any]]:
    if ranking is None:
        return {}
    if not isinstance(ranking, pd.DataFrame) or "id" not in ranking.columns or "rank" not in ranking.columns:
        raise InputError("ranking table: expected the table `curator rank` writes (columns id, rank, score, alignment, influence)")
    table = {str(r["id"]): r for r in ranking.to_dict(orient="records")}
    missing = [c.id for c in candidates if c.id not in table]
    if missing:
        raise InputError(f"ranking table: {len(missing)} of {len(candidates)} candidates have no ranking (e.g. {missing[0]!r}): rank the same candidates file")
    return table


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def suggestion_score(x: float | None) -> float:
    """A combined score mapped into [0, 1] (the server only takes suggestion scores there)."""
    return 0.5 if x is None else 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def group_candidates(candidates: list[Candidate]) -> dict[str, list[Candidate]]:
    """Candidates by group, in order of first appearance; a group's prompts must agree."""
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        members = groups.setdefault(c.group, [])
        if members and members[0].prompt != c.prompt:
            raise InputError(f"group {c.group!r}: candidates {members[0].id!r} and {c.id!r} have different prompts: one group is one prompt")
        members.append(c)
    return groups


def record_id(prompt: Any, candidate_ids: list[str]) -> str:
    """The record's id: a content hash of the prompt and the candidate ids in slot order."""
    return "cur-" + content_hash(prompt, candidate_ids, length=32)


def plan_records(
    candidates: list[Candidate],
    spec: DatasetSpec,
    ranking: pd.DataFrame | None = None,
    vectors: dict[str, list[float]] | None = None,
    fingerprint: str | None = None,
) -> list[dict[str, Any]]:
    """One plain record dict per group: id, fields, metadata, suggestions, vectors (see module doc)."""
    table = _ranking_table(ranking, candidates)
    order = {s: k for k, s in enumerate(spec.strategies)}
    out = []
    for g, members in group_candidates(candidates).items():
        if len(members) > spec.n_slots:
            raise InputError(f"group {g!r} has {len(members)} candidates, the dataset has {spec.n_slots} slots: push to a new --dataset name")
        members = sorted(members, key=lambda c: (order.get(c.strategy, len(order)), c.id))
        prompt = members[0].prompt
        if spec.chat and isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        fields: dict[str, Any] = {PROMPT: prompt}
        meta: dict[str, Any] = {"group": g}
        task = next((c.task for c in members if c.task), None)
        if task:
            meta["task"] = task
        if fingerprint:
            meta["model_fingerprint"] = fingerprint
        for i in range(1, spec.n_slots + 1):
            fields[slot(i)] = members[i - 1].response if i <= len(members) else EMPTY_SLOT
        for i, c in enumerate(members, start=1):
            meta[f"candidate_id_{i}"] = c.id
            meta[f"strategy_{i}"] = c.strategy
            for k in SLOT_FLOATS:
                v = _finite(table.get(c.id, {}).get(k))
                if v is not None:
                    meta[f"{k}_{i}"] = v
        suggestions = []
        if table:
            ranked = sorted(range(len(members)), key=lambda k: (table[members[k].id]["rank"], members[k].id))
            slots = [slot(k + 1) for k in ranked] + [slot(i) for i in range(len(members) + 1, spec.n_slots + 1)]
            scores = [suggestion_score(_finite(table[members[k].id].get("score"))) for k in ranked] + [0.0] * (spec.n_slots - len(members))
            best = members[ranked[0]]
            meta["predicted_best_strategy"] = best.strategy
            suggestions = [
                {"question_name": RANKING, "value": slots, "score": scores, "agent": AGENT},
                {"question_name": BEST, "value": best.strategy, "score": scores[0], "agent": AGENT},
            ]
        rec = {"id": record_id(members[0].prompt, [c.id for c in members]), "fields": fields, "metadata": meta, "suggestions": suggestions}
        if vectors and g in vectors:
            rec["vectors"] = {VECTOR: vectors[g]}
        out.append(rec)
    return out


def to_record(plan: dict[str, Any]) -> Any:
    """An ``rg.Record`` from a planned record dict."""
    import argilla as rg

    suggestions = [rg.Suggestion(s["question_name"], s["value"], score=s.get("score"), agent=s.get("agent"), type="model") for s in plan["suggestions"]]
    return rg.Record(id=plan["id"], fields=plan["fields"], metadata=plan["metadata"], vectors=plan.get("vectors") or None, suggestions=suggestions)


def slot_candidates(metadata: dict[str, Any], n_slots: int) -> dict[str, str]:
    """slot → candidate id from a record's metadata (slots without a candidate are left out)."""
    return {slot(i): str(metadata[f"candidate_id_{i}"]) for i in range(1, n_slots + 1) if metadata.get(f"candidate_id_{i}") not in (None, "")}


def n_slots_of(described: dict[str, Any]) -> int:
    """The number of candidate slots of a dataset (``describe`` form)."""
    return sum(1 for name in described["fields"] if name.startswith(SLOT) and name[len(SLOT):].isdigit())


def strategies_in(candidates: Iterable[Candidate]) -> list[str]:
    return list(dict.fromkeys(c.strategy for c in candidates))
