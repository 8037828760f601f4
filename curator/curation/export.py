"""`curator export`: annotators' rankings (a file from `curator argilla pull`) → SFT rows or DPO pairs.

Output schema (TRL formats; every row also carries provenance columns)::

    SFT, text prompts   prompt, completion
    SFT, chat prompts   messages = the prompt's messages + {"role": "assistant", "content": top}
    DPO, text prompts   prompt, chosen, rejected                       (strings)
    DPO, chat prompts   prompt = messages; chosen, rejected = [{"role": "assistant", "content": ...}]

    provenance (SFT)    record_id, group, task, candidate_id, strategy, n_annotators, agreement, dataset
    provenance (DPO)    record_id, group, task, chosen_id, rejected_id, chosen_strategy,
                        rejected_strategy, chosen_rank, rejected_rank, n_annotators, agreement, dataset

If any kept prompt is a chat, every row uses the chat form (a text prompt becomes one user
message), so a column never mixes types. SFT takes the aggregated top candidate; DPO pairs the top
with each lower candidate (``top-vs-each``) or with the last one (``top-vs-bottom``), skipping a
pair whose aggregated scores tie (no preference). Filters, applied in this order, each record
counted under the first rule that drops it: not submitted (``discarded``/``pending``), fewer than
``min_annotators``, agreement below ``min_agreement`` (a record with no agreement value, i.e. one
annotator, is dropped when a minimum is set), then ``strategies``: candidates of other strategies
are removed from the ranking, and a record left with too few candidates is dropped.

The output is JSONL or Parquet (by suffix) or, for any other path, a ``datasets.save_to_disk``
folder, written atomically, with a dataset card: ``README.md`` inside the folder, or
``<stem>.README.md`` beside a file.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from curator import __version__
from curator.curation.annotations import read_pulled, tally_strategies
from curator.io.atomic import write_bytes_atomic, write_dir_atomic, write_text_atomic
from curator.config import is_int
from curator.errors import InputError

FORMATS = ("sft", "dpo")
DPO_PAIRS = ("top-vs-each", "top-vs-bottom")
FILE_SUFFIXES = (".jsonl", ".parquet")
REFUSED_SUFFIXES = (".json", ".csv", ".txt", ".arrow", ".md", ".tsv")
RULES = ("discarded", "pending", "min_annotators", "min_agreement", "strategies", "tied")


@dataclass(frozen=True)
class ExportConfig:
    """What to export and which records to keep."""

    fmt: str
    min_annotators: int = 1
    min_agreement: float | None = None
    strategies: tuple[str, ...] | None = None
    dpo_pairs: str = "top-vs-each"

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise InputError(f"export format {self.fmt!r} is unknown: use one of {', '.join(FORMATS)} (--format)")
        if self.dpo_pairs not in DPO_PAIRS:
            raise InputError(f"DPO pairing {self.dpo_pairs!r} is unknown: use one of {', '.join(DPO_PAIRS)}")
        if not is_int(self.min_annotators) or self.min_annotators < 1:
            raise InputError(f"min_annotators={self.min_annotators!r} is invalid: use an integer >= 1 (--min-annotators)")
        if self.min_agreement is not None and not (isinstance(self.min_agreement, (int, float)) and 0.0 <= self.min_agreement <= 1.0):
            raise InputError(f"min_agreement={self.min_agreement!r} is invalid: Kendall's W lies in [0, 1] (--min-agreement)")
        if self.strategies is not None:
            strategies = tuple(str(s) for s in self.strategies)
            if not strategies:
                raise InputError("strategies is empty: name at least one strategy, or leave the filter out")
            object.__setattr__(self, "strategies", strategies)


@dataclass
class ExportResult:
    out: Path
    card: Path
    rows: int
    records: int
    kept: int
    filtered: dict[str, int] = field(default_factory=dict)
    strategies: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- rows


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _as_messages(prompt: Any) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


def _method_scores(row: dict[str, Any]) -> dict[str, float]:
    """Each candidate's aggregate score under the pull's method, higher = better (for tie checks)."""
    method = row.get("method") or "borda"
    out: dict[str, float] = {}
    for s in row.get("ranking_scores") or []:
        v = s.get("borda") if method == "borda" else s.get("mean_rank")
        if v is not None:
            out[str(s["candidate_id"])] = float(v) if method == "borda" else -float(v)
    return out


def _filter(row: dict[str, Any], cfg: ExportConfig) -> tuple[str | None, list[str]]:
    """(the rule that drops this record or None, its ranking restricted to the allowed strategies)."""
    if row["status"] != "submitted":
        return row["status"], []
    if not row["ranking"]:
        return "pending", []
    if row["n_annotators"] < cfg.min_annotators:
        return "min_annotators", []
    agreement = row.get("agreement")
    if cfg.min_agreement is not None and (agreement is None or (isinstance(agreement, float) and math.isnan(agreement)) or agreement < cfg.min_agreement):
        return "min_agreement", []
    ranking = list(row["ranking"])
    if cfg.strategies is not None:
        strategy = {c["id"]: c["strategy"] for c in row["candidates"]}
        ranking = [r for r in ranking if strategy[r] in cfg.strategies]
    if len(ranking) < (1 if cfg.fmt == "sft" else 2):
        return "strategies", []
    return None, ranking


def _provenance(row: dict[str, Any]) -> dict[str, Any]:
    agreement = row.get("agreement")
    if isinstance(agreement, float) and math.isnan(agreement):
        agreement = None
    return {"record_id": str(row["record_id"]), "group": row.get("group"), "task": row.get("task"), "n_annotators": int(row["n_annotators"]), "agreement": agreement, "dataset": row.get("dataset")}


def _sft_row(row: dict[str, Any], ranking: list[str], chat: bool) -> dict[str, Any]:
    top = {c["id"]: c for c in row["candidates"]}[ranking[0]]
    body: dict[str, Any] = {"messages": _as_messages(row["prompt"]) + [_assistant(top["text"])]} if chat else {"prompt": row["prompt"], "completion": top["text"]}
    return {**body, **_provenance(row), "candidate_id": top["id"], "strategy": top["strategy"]}


def _dpo_rows(row: dict[str, Any], ranking: list[str], chat: bool, pairs: str) -> tuple[list[dict[str, Any]], int]:
    by_id = {c["id"]: c for c in row["candidates"]}
    scores = _method_scores(row)
    top = ranking[0]
    lower = ranking[1:] if pairs == "top-vs-each" else ranking[-1:]
    out, tied = [], 0
    for rej in lower:
        if top in scores and rej in scores and scores[top] == scores[rej]:
            tied += 1
            continue
        c, r = by_id[top], by_id[rej]
        if chat:
            body: dict[str, Any] = {"prompt": _as_messages(row["prompt"]), "chosen": [_assistant(c["text"])], "rejected": [_assistant(r["text"])]}
        else:
            body = {"prompt": row["prompt"], "chosen": c["text"], "rejected": r["text"]}
        out.append({
            **body, **_provenance(row),
            "chosen_id": c["id"], "rejected_id": r["id"], "chosen_strategy": c["strategy"], "rejected_strategy": r["strategy"],
            "chosen_rank": 1, "rejected_rank": ranking.index(rej) + 1,
        })
    return out, tied


def build_rows(pulled: list[dict[str, Any]], cfg: ExportConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Exported rows and the counts for the card, from validated pulled rows."""
    filtered = {r: 0 for r in RULES}
    kept: list[tuple[dict[str, Any], list[str]]] = []
    for row in pulled:
        rule, ranking = _filter(row, cfg)
        if rule is None:
            kept.append((row, ranking))
        else:
            filtered[rule] += 1
    chat = any(isinstance(row["prompt"], list) for row, _ in kept)
    out: list[dict[str, Any]] = []
    tied_pairs = 0
    kept_records: list[dict[str, Any]] = []
    top_ids: list[tuple[dict[str, Any], str]] = []
    for row, ranking in kept:
        if cfg.fmt == "sft":
            out.append(_sft_row(row, ranking, chat))
        else:
            rows, tied = _dpo_rows(row, ranking, chat, cfg.dpo_pairs)
            tied_pairs += tied
            if not rows:
                filtered["tied"] += 1
                continue
            out.extend(rows)
        kept_records.append(row)
        top_ids.append((row, ranking[0]))
    stats = {
        "records": len(pulled), "kept": len(kept_records), "rows": len(out), "filtered": filtered, "tied_pairs": tied_pairs, "chat": chat,
        "top_strategies": dict(Counter({c["id"]: c["strategy"] for c in r["candidates"]}[t] for r, t in top_ids).most_common()),
        "strategy_votes": tally_strategies(kept_records),
        "scores": _score_summary(top_ids),
        "agreement": _summary([r.get("agreement") for r in kept_records]),
        "suggestion_top_match": _suggestion_match(top_ids),
        "sources": _sources(pulled),
    }
    return out, stats


def _summary(values: Iterable[Any]) -> dict[str, float] | None:
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not xs:
        return None
    return {"n": len(xs), "mean": statistics.fmean(xs), "min": min(xs), "max": max(xs)}


def _score_summary(top_ids: list[tuple[dict[str, Any], str]]) -> dict[str, Any]:
    """Mean/min/max of curator's scores of the exported top candidates, per signal present."""
    picked: dict[str, list[Any]] = {"alignment": [], "influence": [], "score": []}
    for row, top in top_ids:
        for s in row.get("scores") or []:
            if s.get("candidate_id") == top:
                for k in picked:
                    picked[k].append(s.get(k))
    return {k: v for k, v in ((k, _summary(vals)) for k, vals in picked.items()) if v is not None}


def _suggestion_match(top_ids: list[tuple[dict[str, Any], str]]) -> dict[str, int] | None:
    pairs = [(row.get("suggested_ranking") or [None])[0] == top for row, top in top_ids if row.get("suggested_ranking")]
    return {"records": len(pairs), "matched": sum(pairs)} if pairs else None


def _sources(pulled: list[dict[str, Any]]) -> dict[str, list[str]]:
    def values(key: str) -> list[str]:
        return sorted({str(r[key]) for r in pulled if r.get(key) not in (None, "")})

    return {k: values(k) for k in ("dataset", "workspace", "pulled_at", "model_fingerprint", "curator_version", "method")}


# --------------------------------------------------------------------------- writing


def output_kind(out: str | Path) -> str:
    """'jsonl', 'parquet' or 'dir' from the output path's suffix."""
    suffix = Path(out).suffix.lower()
    if suffix in FILE_SUFFIXES:
        return suffix[1:]
    if suffix in REFUSED_SUFFIXES:
        raise InputError(f"{out}: unsupported output type {suffix!r}: use .jsonl, .parquet, or a folder name (datasets.save_to_disk)")
    return "dir"


def card_path(out: str | Path) -> Path:
    """Where the dataset card of ``out`` goes: inside a folder, or ``<stem>.README.md`` beside a file."""
    p = Path(out)
    return p / "README.md" if output_kind(p) == "dir" else p.with_name(p.stem + ".README.md")


def write_rows(rows: list[dict[str, Any]], out: str | Path, card: str | None = None) -> Path:
    """Write ``rows`` atomically as JSONL, Parquet, or a datasets folder (with ``card`` as its README)."""
    p = Path(out)
    kind = output_kind(p)
    if kind == "jsonl":
        write_bytes_atomic(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        write_bytes_atomic(p, buf.getvalue())
    else:
        _write_dir(rows, p, card)
        return p
    if card is not None:
        write_text_atomic(card_path(p), card)
    return p


def _write_dir(rows: list[dict[str, Any]], out: Path, card: str | None) -> None:
    import datasets

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "dataset_info.json").exists())):
        raise InputError(f"{out}: exists and is not a dataset folder written by curator: choose a new --out path")

    def fill(tmp: Path) -> None:
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")

    write_dir_atomic(out, fill)


# --------------------------------------------------------------------------- card


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def render_card(stats: dict[str, Any], cfg: ExportConfig, source: Path, out: Path, exported_at: str) -> str:
    """The dataset card: provenance, counts, filters, scores and the schema."""
    src = stats["sources"]
    f = stats["filtered"]
    lines = [
        "---",
        f"tags: [curator, argilla, {cfg.fmt}]",
        "---",
        f"# {out.name}: curated {cfg.fmt.upper()} data",
        "",
        f"Made by curator {__version__} with `curator export --format {cfg.fmt}` on {exported_at} from `{source}`,",
        "a file of annotators' rankings pulled from Argilla (`curator argilla pull`).",
        "",
        "## Provenance",
        f"- Argilla dataset: {', '.join(src['dataset']) or 'unknown'} (workspace {', '.join(src['workspace']) or 'unknown'})",
        f"- pulled at: {', '.join(src['pulled_at']) or 'unknown'}; aggregation: {', '.join(src['method']) or 'unknown'}",
        f"- model fingerprint: {', '.join(src['model_fingerprint']) or 'none recorded (pushed without a gradient store)'}",
        "",
        "## Counts",
        f"- records pulled: {stats['records']}",
        f"- records kept: {stats['kept']}",
        f"- rows written: {stats['rows']}",
        f"- filtered as discarded by annotators: {f['discarded']}",
        f"- filtered as pending (no submitted ranking): {f['pending']}",
        f"- filtered by min annotators ({cfg.min_annotators}): {f['min_annotators']}",
        f"- filtered by min agreement ({'none' if cfg.min_agreement is None else cfg.min_agreement}): {f['min_agreement']}",
        f"- filtered by strategies ({'all' if cfg.strategies is None else ', '.join(cfg.strategies)}): {f['strategies']}",
    ]
    if cfg.fmt == "dpo":
        lines += [f"- filtered as every pair tied: {f['tied']}", f"- tied pairs skipped: {stats['tied_pairs']}", f"- pairs: {cfg.dpo_pairs}"]
    lines += ["", "## Strategies", "Strategy of the top-ranked (exported) candidate, per record:"]
    lines += [f"- {s}: {n}" for s, n in stats["top_strategies"].items()] or ["- none"]
    if stats["strategy_votes"]:
        lines += ["", "Annotators' best-strategy votes over the kept records:"]
        lines += [f"- {s}: {n}" for s, n in stats["strategy_votes"].items()]
    lines += ["", "## Scores", "curator's scores of the top-ranked candidates (alignment: closeness to the model's own answers;",
              "influence: gradient similarity to the eval tasks; score: the combined ranking score):"]
    if stats["scores"]:
        lines += [f"- {k}: mean {_fmt(v['mean'])}, min {_fmt(v['min'])}, max {_fmt(v['max'])} (n={v['n']})" for k, v in stats["scores"].items()]
    else:
        lines.append("- none recorded")
    agr = stats["agreement"]
    lines.append("- annotator agreement (Kendall's W): " + (f"mean {_fmt(agr['mean'])}, min {_fmt(agr['min'])} over {agr['n']} records" if agr else "n/a (single annotators)"))
    match = stats["suggestion_top_match"]
    if match:
        lines.append(f"- annotators' top choice equals curator's suggested top in {match['matched']} of {match['records']} records")
    schema = _SCHEMA["sft_chat" if cfg.fmt == "sft" and stats["chat"] else "sft_text" if cfg.fmt == "sft" else "dpo_chat" if stats["chat"] else "dpo_text"]
    lines += ["", "## Schema", schema, ""]
    return "\n".join(lines)


_PROV_SFT = "provenance: record_id, group, task, candidate_id, strategy, n_annotators, agreement (Kendall's W), dataset"
_PROV_DPO = "provenance: record_id, group, task, chosen_id, rejected_id, chosen_strategy, rejected_strategy, chosen_rank, rejected_rank, n_annotators, agreement, dataset"
_SCHEMA = {
    "sft_text": f"TRL prompt-completion: `prompt` (str), `completion` (str, the top-ranked candidate); {_PROV_SFT}.",
    "sft_chat": f"TRL conversational: `messages` (the prompt's messages + the top-ranked candidate as the assistant turn); {_PROV_SFT}.",
    "dpo_text": f"TRL preference: `prompt`, `chosen`, `rejected` (str); {_PROV_DPO}.",
    "dpo_chat": f"TRL conversational preference: `prompt` (messages), `chosen`, `rejected` (one assistant message each); {_PROV_DPO}.",
}


# --------------------------------------------------------------------------- entry point


def export(
    pulled_path: str | Path,
    fmt: str,
    out: str | Path,
    min_annotators: int = 1,
    min_agreement: float | None = None,
    strategies: Iterable[str] | None = None,
    dpo_pairs: str = "top-vs-each",
    now: datetime | None = None,
) -> ExportResult:
    """Export a pulled file as SFT rows or DPO pairs to ``out``, with a dataset card.

    Returns an ``ExportResult``: the output and card paths, rows written, records read and kept,
    and counts of what was filtered and of each strategy kept."""
    cfg = ExportConfig(fmt, min_annotators, min_agreement, None if strategies is None else tuple(strategies), dpo_pairs)
    out_p = Path(out)
    output_kind(out_p)
    pulled = [row for _, row in read_pulled(pulled_path)]
    rows, stats = build_rows(pulled, cfg)
    if not rows:
        f = ", ".join(f"{k} {v}" for k, v in stats["filtered"].items() if v)
        raise InputError(f"{pulled_path}: nothing to export: {stats['records']} records pulled, all filtered ({f or 'none kept'}): relax the filters or annotate more records")
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    card = render_card(stats, cfg, Path(pulled_path), out_p, stamp)
    write_rows(rows, out_p, card)
    return ExportResult(out_p, card_path(out_p), len(rows), stats["records"], stats["kept"], stats["filtered"], stats["top_strategies"])
