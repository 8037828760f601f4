"""Candidate files in the column conventions other tools write, mapped to curator's rows.

- **curator**: ``prompt``, ``response``, ``strategy`` (and optional ``id``, ``task``, ``group``).
- **distilabel** (its text-generation and UltraFeedback pipelines): ``instruction``,
  ``generations`` (a list of responses), and optionally ``generation_models`` (the model of each
  generation, the same length). Each generation becomes a candidate of the instruction's group;
  its strategy is its generation model, or ``generation_<i>`` without one.
- **Argilla's ranking template** (``rg.Settings.for_preference_modeling``-style and the classic
  feedback ranking datasets): ``instruction`` (or ``prompt``), ``response1``, ``response2``, ...
  Each non-empty response column becomes a candidate whose strategy is the column name.

``load_any`` detects the convention from the columns, says which one it used, and validates the
mapped rows exactly as ``load_candidates`` does (errors name the file and the source row).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from curator.errors import InputError
from curator.io.data import Candidate, load_candidates
from curator.io.readers import read_rows, short_repr

CONVENTIONS = ("curator", "distilabel", "argilla-ranking")
_RESPONSE_N = re.compile(r"^response_?(\d+)$")


def detect(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The convention of a file's rows (from its first row's columns)."""
    if not rows:
        return "curator"
    cols = set(rows[0][1])
    if {"prompt", "response", "strategy"} <= cols:
        return "curator"
    if "instruction" in cols and "generations" in cols:
        return "distilabel"
    if ("instruction" in cols or "prompt" in cols) and any(_RESPONSE_N.match(c) for c in cols):
        return "argilla-ranking"
    return "curator"


def _distilabel(where: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    gens = row.get("generations")
    if not isinstance(gens, (list, tuple)) or not gens:
        raise InputError(f"{where}: field 'generations' must be a non-empty list of responses (distilabel's column)")
    models = row.get("generation_models")
    if models is not None and (not isinstance(models, (list, tuple)) or len(models) != len(gens)):
        raise InputError(f"{where}: field 'generation_models' must list one model per generation ({len(gens)}), got {short_repr(models)}")
    out = []
    for i, text in enumerate(gens):
        if text is None or (isinstance(text, str) and not text.strip()):
            continue  # a failed generation: distilabel writes None
        strategy = str(models[i]) if models is not None and models[i] else f"generation_{i + 1}"
        out.append({"prompt": row.get("instruction"), "response": text, "strategy": strategy, "task": row.get("task"), "group": row.get("id")})
    return out


def _argilla_ranking(where: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    prompt = row.get("instruction", row.get("prompt"))
    cols = sorted((c for c in row if _RESPONSE_N.match(c)), key=lambda c: int(_RESPONSE_N.match(c).group(1)))  # type: ignore[union-attr]
    out = []
    for c in cols:
        text = row.get(c)
        if text is None or (isinstance(text, str) and not text.strip()) or text != text:
            continue
        out.append({"prompt": prompt, "response": text, "strategy": c, "task": row.get("task"), "group": row.get("id")})
    return out


def load_any(path: str | Path) -> tuple[list[Candidate], str]:
    """(candidates, the convention used) for a file in any of ``CONVENTIONS``."""
    rows = read_rows(path)
    kind = detect(rows)
    if kind == "curator":
        return load_candidates(path, rows), kind
    expand = _distilabel if kind == "distilabel" else _argilla_ranking
    mapped: list[tuple[str, dict[str, Any]]] = []
    for where, row in rows:
        got = expand(where, row)
        if not got:
            raise InputError(f"{where}: no non-empty response in this {kind} row: drop the row or fill in a response")
        for k, m in enumerate(got, start=1):
            mapped.append((f"{where} (candidate {k})", {key: v for key, v in m.items() if v is not None}))
    return load_candidates(path, mapped), kind
