"""A curator dataset's Argilla settings: the questions that fit the candidates, and the check that
an existing dataset can take a push.

**Questions** (``--questions``; ``auto`` picks from the largest prompt group, N candidates)::

    ranking   2 <= N <= 50: ranking (RankingQuestion over the slots, required) and
              best_strategy (LabelQuestion over the strategies, required)
    rating    N == 1 (a plain SFT set being reviewed), or asked for: per slot i, rating_i
              (RatingQuestion 1-5) and keep_i (LabelQuestion keep/drop); slot 1's are required
    both      ranking and rating together (N >= 2)
    always    comment (TextQuestion, optional)

Argilla's ranking question takes 2 to 50 options, so N > 50 is refused before any request, with
how to split the group. **Fields** are prompt (ChatField when a prompt is a chat, else TextField)
and candidate_1..candidate_N (TextField, markdown; a slot a smaller group lacks shows a
placeholder). **Metadata**: alignment_i, influence_i, score_i (float; per slot), strategy_i
(terms; per slot), task, predicted_best_strategy (terms), and hidden from annotators:
candidate_id_i, group, model_fingerprint (terms). **Vectors**: gradient (dims = min(vector_dim,
store dim)), only with a gradient store. ``allow_extra_metadata = False``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace
from typing import Any

from curator.curation.ranking import RankingWeights
from curator.errors import InputError, MismatchError
from curator.io.data import Candidate

PROMPT = "prompt"
SLOT = "candidate_"
RANKING = "ranking"
BEST = "best_strategy"
COMMENT = "comment"
RATING = "rating_"
KEEP = "keep_"
KEEP_LABELS = ("keep", "drop")
RATING_VALUES = (1, 2, 3, 4, 5)
VECTOR = "gradient"
MAX_VECTOR_DIM = 4096  # Elasticsearch's cap on dense vectors
MAX_NAME = 200  # argilla-server's limit on dataset names and label values
MAX_SLOTS = 50  # Argilla's ranking question takes 2 to 50 options
QUESTION_MODES = ("auto", "ranking", "rating", "both")
SLOT_FLOATS = ("alignment", "influence", "score")


class DatasetMismatchError(MismatchError):
    """An existing Argilla dataset's settings do not fit this push (exit code 2)."""


def slot(i: int) -> str:
    return f"{SLOT}{i}"


def rating_q(i: int) -> str:
    return f"{RATING}{i}"


def keep_q(i: int) -> str:
    return f"{KEEP}{i}"


@dataclass(frozen=True)
class DatasetSpec:
    """What a curator dataset's settings must hold; built from the candidates (and the store).

    ``questions`` is resolved: ranking, rating or both. ``keep_threshold`` is the combined score at
    or above which the keep/drop suggestion is keep.
    """

    chat: bool
    n_slots: int
    strategies: tuple[str, ...]
    vector_dim: int | None = None
    weights: RankingWeights = RankingWeights()
    questions: str = "ranking"
    keep_threshold: float = 0.0

    @property
    def ranks(self) -> bool:
        return self.questions in ("ranking", "both")

    @property
    def rates(self) -> bool:
        return self.questions in ("rating", "both")

    @property
    def asks_best(self) -> bool:
        return self.ranks

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


def resolve_questions(mode: str, n_slots: int, biggest: str) -> str:
    """The question set for prompts of up to ``n_slots`` candidates (``biggest``: a group that large)."""
    if mode not in QUESTION_MODES:
        raise InputError(f"--questions {mode!r} is unknown: use one of {', '.join(QUESTION_MODES)}")
    if n_slots > MAX_SLOTS:
        raise InputError(f"group {biggest!r} has {n_slots} candidates, and Argilla shows at most {MAX_SLOTS} per record (its ranking question takes 2 to {MAX_SLOTS}): split the group, giving its candidates several `group` values of at most {MAX_SLOTS} each, or drop candidates")
    if mode == "auto":
        return "rating" if n_slots == 1 else "ranking"
    if mode in ("ranking", "both") and n_slots < 2:
        raise InputError(f"--questions {mode} needs prompts with 2 to {MAX_SLOTS} candidates (Argilla's ranking question takes 2 to {MAX_SLOTS} options), and every prompt here has 1: use --questions rating (the default for one candidate per prompt)")
    return mode


def spec_for(candidates: list[Candidate], vector_dim: int | None = None, store_dim: int | None = None, weights: RankingWeights = RankingWeights(), questions: str = "auto", keep_threshold: float = 0.0) -> DatasetSpec:
    """The spec for ``candidates``: chat if any prompt is a chat, N = the largest group, the
    questions that fit N (or ``questions``)."""
    if not candidates:
        raise InputError("no candidates to push: give a candidates file with at least one row")
    sizes: dict[str, int] = {}
    for c in candidates:
        sizes[c.group] = sizes.get(c.group, 0) + 1
    strategies = tuple(check_name("strategy", s, "rename the strategy in the candidates file (it becomes an Argilla label)", typed=False) for s in dict.fromkeys(c.strategy for c in candidates))
    biggest = max(sizes, key=lambda g: sizes[g])
    mode = resolve_questions(questions, sizes[biggest], biggest)
    dim = None
    if store_dim is not None:
        want = 256 if vector_dim is None else vector_dim
        if not 2 <= want <= MAX_VECTOR_DIM:
            raise InputError(f"vector dim {want} is invalid: use 2..{MAX_VECTOR_DIM} (Elasticsearch caps dense vectors at {MAX_VECTOR_DIM})")
        dim = min(want, store_dim)
    return DatasetSpec(any(isinstance(c.prompt, list) for c in candidates), sizes[biggest], strategies, dim, weights, mode, float(keep_threshold))


# --------------------------------------------------------------------------- settings


def guidelines(spec: DatasetSpec) -> str:
    w = spec.weights
    tasks = []
    if spec.ranks:
        tasks.append("**Rank the candidates from best (1) to worst** as answers you would want a model to learn from, and pick the **best strategy** for this prompt. The ranking is pre-filled with curator's suggestion: change it wherever you disagree. Ties are allowed. An empty slot (a prompt with fewer candidates) goes last.")
    if spec.rates:
        tasks.append(f"**Rate each candidate from 1 (unusable) to 5 (exemplary)** as an answer you would want a model to learn from, and mark it **keep** or **drop** for the training set. Both are pre-filled with curator's suggestion: the rating maps the combined score to 1-5 by fifths of its logistic, and keep means a combined score of at least {spec.keep_threshold:g}. Change them wherever you disagree. Leave an empty slot unanswered.")
    return f"""## Review the candidate responses

Each record is one prompt with up to {spec.n_slots} candidate response(s), each made by a generation
strategy ({', '.join(spec.strategies)}).

{chr(10).join('- ' + t for t in tasks)}

Add a comment if useful.

## What the scores mean (metadata, per slot i)
- **alignment_i**: how close candidate i is to the target model's own answers to this prompt (mean
  similarity to k samples from the model). Aligned responses are easier for the model to learn.
- **influence_i**: gradient similarity of candidate i to the eval tasks: how much training on it is
  expected to lower the eval loss (LESS-style, cosine of projected LoRA gradients).
- **score_i**: the combined score used for the suggestions: {w.alignment:g} × z(alignment) + {w.influence:g} × z(influence),
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
    questions: list[Any] = []
    if spec.ranks:
        questions.append(rg.RankingQuestion(name=RANKING, title="Rank the candidates, best first", values={slot(i): f"Candidate {i}" for i in range(1, spec.n_slots + 1)},
                                            description="1 = best. Ties allowed. Pre-filled with curator's ranking.", required=True, client=client))
        questions.append(rg.LabelQuestion(name=BEST, title="Best strategy for this prompt", labels={s: s for s in spec.strategies}, required=True, client=client))
    if spec.rates:
        one = spec.n_slots == 1
        for i in range(1, spec.n_slots + 1):
            which = "the candidate" if one else f"candidate {i}"
            questions.append(rg.RatingQuestion(name=rating_q(i), title=f"Rate {which} (1 = unusable, 5 = exemplary)", values=list(RATING_VALUES), required=(i == 1), client=client))
            questions.append(rg.LabelQuestion(name=keep_q(i), title=f"Keep {which} in the training set?", labels={k: k.capitalize() for k in KEEP_LABELS}, required=(i == 1), client=client))
    questions.append(rg.TextQuestion(name=COMMENT, title="Comment (optional)", required=False, use_markdown=False, client=client))
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
        opts = getattr(q, "values", None) if kind(q) in ("ranking", "rating") else getattr(q, "labels", None)
        questions[q.name] = (kind(q), list(opts) if opts is not None else None)
    return {
        "fields": {f.name: kind(f) for f in settings.fields},
        "questions": questions,
        "metadata": {m.name: kind(m) for m in settings.metadata},
        "vectors": {v.name: int(v.dimensions) for v in settings.vectors},
    }


def questions_of(described: dict[str, Any]) -> str | None:
    """The question set of a dataset (``describe`` form): ranking, rating, both, or None (not curator's)."""
    q = described["questions"]
    ranks = q.get(RANKING, (None,))[0] == "ranking"
    rates = q.get(rating_q(1), (None,))[0] == "rating"
    return "both" if ranks and rates else "ranking" if ranks else "rating" if rates else None


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
    mode = questions_of(existing)
    if mode is None:
        raise DatasetMismatchError(f"dataset {name!r} has no ranking question '{RANKING}' and no rating question '{rating_q(1)}' (it was not made by curator): {fix}")
    if mode != spec.questions:
        raise DatasetMismatchError(f"dataset {name!r} has {mode} questions, this push asks for {spec.questions} questions: {fix}, or pass --questions {mode}")
    n_have = sum(1 for k in fields if k.startswith(SLOT) and k[len(SLOT):].isdigit())
    if spec.ranks:
        n_have = len(q[RANKING][1] or [])
    if n_have != spec.n_slots:
        have = f"question '{RANKING}' with {n_have} options" if spec.ranks else f"{n_have} candidate slots"
        raise DatasetMismatchError(f"dataset {name!r} has {have}, this push needs {spec.n_slots}: {fix}")
    for i in range(1, spec.n_slots + 1):
        if fields.get(slot(i)) != "text":
            raise DatasetMismatchError(f"dataset {name!r} has no text field '{slot(i)}': {fix}")
        if spec.rates and (q.get(rating_q(i), (None,))[0] != "rating" or q.get(keep_q(i), (None,))[0] != "label_selection"):
            raise DatasetMismatchError(f"dataset {name!r} lacks the questions '{rating_q(i)}' and '{keep_q(i)}': {fix}")
    labels = list(spec.strategies)
    if spec.asks_best:
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


def n_slots_of(described: dict[str, Any]) -> int:
    """The number of candidate slots of a dataset (``describe`` form)."""
    return sum(1 for name in described["fields"] if name.startswith(SLOT) and name[len(SLOT):].isdigit())
