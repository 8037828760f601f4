"""`curator export`: annotators' answers (a file from `curator argilla pull`) → SFT, DPO or KTO rows.

The rows of each format are built in ``curator.curation.formats`` (TRL's dataset formats, with
provenance columns on every row). Filters, applied in this order, each record counted under the
first rule that drops it: not submitted (``discarded``/``pending``: no submitted answer the format
can use), fewer than ``min_annotators``, agreement below ``min_agreement`` (Kendall's W; a record
with no agreement value, i.e. one annotator, is dropped when a minimum is set), then
``strategies``: candidates of other strategies are left out, and a record left with too few
candidates is dropped; ``tied``: a record whose every DPO pair fell at or below the margin;
``no_answers``: a record without the answers the format uses (two ordered candidates for DPO, a
majority keep/drop or a rating past the thresholds for KTO and kept/rated SFT).

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

from curator.curation import formats as F
from curator.curation.card import render_card
from curator.curation.annotations import read_pulled, tally_strategies
from curator.io.atomic import write_bytes_atomic, write_dir_atomic, write_text_atomic
from curator.config import is_int
from curator.errors import InputError

FORMATS = ("sft", "dpo", "kto")
DPO_PAIRS = F.DPO_PAIRS
FILE_SUFFIXES = (".jsonl", ".parquet")
REFUSED_SUFFIXES = (".json", ".csv", ".txt", ".arrow", ".md", ".tsv")
RULES = ("discarded", "pending", "min_annotators", "min_agreement", "strategies", "tied", "no_answers")


@dataclass(frozen=True)
class ExportConfig:
    """What to export and which records to keep."""

    fmt: str
    min_annotators: int = 1
    min_agreement: float | None = None
    strategies: tuple[str, ...] | None = None
    dpo_pairs: str = "top-vs-each"
    order: str = "auto"  # ranking or rating order of a record's candidates (SFT top, DPO)
    sft_from: str = "top"
    min_margin: float = 0.0
    kto_from: str = "auto"
    min_rating: float = 4.0
    max_rating: float = 2.0
    conversational: bool = False
    min_annotator_agreement: float | None = None

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise InputError(f"export format {self.fmt!r} is unknown: use one of {', '.join(FORMATS)} (--format)")
        if self.dpo_pairs not in DPO_PAIRS:
            raise InputError(f"DPO pairing {self.dpo_pairs!r} is unknown: use one of {', '.join(DPO_PAIRS)} (--pairs)")
        for name, value, choices, flag in (("order", self.order, F.ORDERS, "--order"), ("sft_from", self.sft_from, F.SFT_FROM, "--sft-from"), ("kto_from", self.kto_from, F.KTO_FROM, "--kto-from")):
            if value not in choices:
                raise InputError(f"{flag} {value!r} is unknown: use one of {', '.join(choices)}")
        for name, value in (("--min-margin", self.min_margin), ("--min-rating", self.min_rating), ("--max-rating", self.max_rating)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{name} {value!r} is invalid: use a number")
        if self.min_margin < 0:
            raise InputError(f"--min-margin {self.min_margin} is invalid: use a number >= 0 (pairs must differ by more than it)")
        if self.min_annotator_agreement is not None and not (isinstance(self.min_annotator_agreement, (int, float)) and -1.0 <= self.min_annotator_agreement <= 1.0):
            raise InputError(f"--min-annotator-agreement {self.min_annotator_agreement!r} is invalid: Kendall's tau lies in [-1, 1]")
        if not 1 <= self.max_rating < self.min_rating <= 5:
            raise InputError(f"--max-rating {self.max_rating} and --min-rating {self.min_rating} are invalid: use 1 <= max-rating < min-rating <= 5 (ratings between them are neither good nor bad)")
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
    left_out: list[str] = field(default_factory=list)  # annotators below --min-annotator-agreement


# --------------------------------------------------------------------------- rows


def _filter(row: dict[str, Any], cfg: ExportConfig) -> tuple[str | None, set[str]]:
    """(the rule that drops this record or None, the candidate ids of the allowed strategies)."""
    if row["status"] != "submitted":
        return row["status"], set()
    answered = bool(row["ranking"]) or bool(row.get("candidate_ratings")) or bool(row.get("candidate_labels"))
    if not answered:
        return "pending", set()
    if row["n_annotators"] < cfg.min_annotators:
        return "min_annotators", set()
    agreement = row.get("agreement")
    if cfg.min_agreement is not None and (agreement is None or (isinstance(agreement, float) and math.isnan(agreement)) or agreement < cfg.min_agreement):
        return "min_agreement", set()
    allowed = {str(c["id"]) for c in row["candidates"] if cfg.strategies is None or c["strategy"] in cfg.strategies}
    if not allowed:
        return "strategies", set()
    return None, allowed


def _rows_of(row: dict[str, Any], allowed: set[str], cfg: ExportConfig, chat: bool, kto_from: str) -> tuple[list[dict[str, Any]], int, str | None]:
    """(rows, DPO pairs skipped at the margin, the candidate exported as the record's top or None)."""
    used, ids, scores = F.order_of(row, cfg.order, allowed)
    if cfg.fmt == "sft":
        rows = F.sft_rows(row, ids, cfg.sft_from, chat, cfg.min_rating, allowed)
        return rows, 0, (ids[0] if ids and cfg.sft_from == "top" else None)
    if cfg.fmt == "dpo":
        rows, skipped = F.dpo_rows(row, ids, scores, used, chat, cfg.dpo_pairs, cfg.min_margin)
        return rows, skipped, (ids[0] if rows else None)
    return F.kto_rows(row, kto_from, chat, cfg.min_rating, cfg.max_rating, allowed), 0, None


def build_rows(pulled: list[dict[str, Any]], cfg: ExportConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Exported rows and the counts for the card, from validated pulled rows."""
    filtered = {r: 0 for r in RULES}
    kept: list[tuple[dict[str, Any], set[str]]] = []
    for row in pulled:
        rule, allowed = _filter(row, cfg)
        if rule is None:
            kept.append((row, allowed))
        else:
            filtered[rule] += 1
    chat = cfg.conversational or any(isinstance(row["prompt"], list) for row, _ in kept)
    # auto: labels when the export has any keep/drop label at all, decided once for every record
    kto_from = cfg.kto_from if cfg.kto_from != "auto" else ("labels" if any(row.get("candidate_labels") for row, _ in kept) else "ratings")
    out: list[dict[str, Any]] = []
    skipped_pairs = 0
    kept_records: list[dict[str, Any]] = []
    top_ids: list[tuple[dict[str, Any], str]] = []
    for row, allowed in kept:
        rows, skipped, top = _rows_of(row, allowed, cfg, chat, kto_from)
        skipped_pairs += skipped
        if not rows:
            narrowed = len(allowed) < len(row["candidates"])
            filtered["tied" if cfg.fmt == "dpo" and skipped else "strategies" if narrowed else "no_answers"] += 1
            continue
        out.extend(rows)
        kept_records.append(row)
        if top is not None:
            top_ids.append((row, top))
    strategy_of = {str(c["id"]): c["strategy"] for r in kept_records for c in r["candidates"]}
    exported = [r.get("candidate_id") or r.get("chosen_id") for r in out] if cfg.fmt != "dpo" else [t for _, t in top_ids]
    stats = {
        "records": len(pulled), "kept": len(kept_records), "rows": len(out), "filtered": filtered, "tied_pairs": skipped_pairs, "chat": chat,
        "top_strategies": dict(Counter(strategy_of[c] for c in exported if c in strategy_of).most_common()),
        "strategy_votes": tally_strategies(kept_records),
        "scores": _score_summary(top_ids),
        "agreement": _summary([r.get("agreement") for r in kept_records]),
        "suggestion_top_match": _suggestion_match(top_ids),
        "sources": _sources(pulled),
        "labels": dict(Counter(bool(r["label"]) for r in out)) if cfg.fmt == "kto" else None,
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
        quiet_before = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # the CLI draws its own; datasets' bar would interleave with error lines
        try:
            datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
        finally:
            if not quiet_before:
                datasets.enable_progress_bars()
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")

    write_dir_atomic(out, fill)


def push_to_hub(result: ExportResult, repo: str) -> str:
    """Push an export (its rows and its card as the README) to the Hugging Face Hub dataset ``repo``.

    Runs only where a hub is reachable; offline (``HF_HUB_OFFLINE=1``, or no network) it stops
    with one line, and the export written locally stays. Its offline equivalent is the folder
    output (``datasets.save_to_disk`` with the same card as README.md). Returns the repo's URL.
    """
    import os

    from curator.errors import CuratorRuntimeError

    if not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/")):
        raise InputError(f"--push-to-hub {repo!r} is not a Hub repo id: write it as OWNER/NAME")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise CuratorRuntimeError(f"the Hub is offline here (HF_HUB_OFFLINE is set): the export is written to {result.out}; push it from a machine that reaches the Hub, or load the folder form with datasets.load_from_disk")
    import datasets
    from huggingface_hub import HfApi

    kind = output_kind(result.out)
    try:
        ds = datasets.load_from_disk(str(result.out)) if kind == "dir" else datasets.load_dataset(kind if kind == "parquet" else "json", data_files=str(result.out), split="train")
        ds.push_to_hub(repo)
        HfApi().upload_file(path_or_fileobj=str(result.card), path_in_repo="README.md", repo_id=repo, repo_type="dataset")
    except Exception as exc:  # noqa: BLE001 (network and auth failures of the hub client: one line)
        raise CuratorRuntimeError(f"pushing to the Hub repo {repo!r} failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}): the export is written to {result.out}; check HF_TOKEN and the network, then push again") from None
    return f"https://huggingface.co/datasets/{repo}"


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
    **options: Any,
) -> ExportResult:
    """Export a pulled file as SFT, DPO or KTO rows to ``out``, with a dataset card.

    ``options`` are the other ``ExportConfig`` fields (``order``, ``sft_from``, ``min_margin``,
    ``kto_from``, ``min_rating``, ``max_rating``, ``conversational``). Returns an ``ExportResult``:
    the output and card paths, rows written, records read and kept, and counts of what was
    filtered and of each strategy exported."""
    unknown = sorted(set(options) - set(ExportConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"export() got an unexpected option {unknown[0]!r}")
    cfg = ExportConfig(fmt, min_annotators, min_agreement, None if strategies is None else tuple(strategies), dpo_pairs, **options)
    out_p = Path(out)
    output_kind(out_p)
    pulled = [row for _, row in read_pulled(pulled_path)]
    left_out: list[str] = []
    if cfg.min_annotator_agreement is not None:
        from curator.curation import review

        left_out = review.low_agreement_annotators(review.summary(pulled), cfg.min_annotator_agreement)
        pulled = review.without_annotators(pulled, set(left_out))
    rows, stats = build_rows(pulled, cfg)
    stats["left_out"] = left_out
    from curator.curation import review

    stats["review"] = review.summary(pulled)
    if not rows:
        f = ", ".join(f"{k} {v}" for k, v in stats["filtered"].items() if v)
        raise InputError(f"{pulled_path}: nothing to export: {stats['records']} records pulled, all filtered ({f or 'none kept'}): relax the filters or annotate more records")
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    card = render_card(stats, cfg, Path(pulled_path), out_p, stamp)
    write_rows(rows, out_p, card)
    return ExportResult(out_p, card_path(out_p), len(rows), stats["records"], stats["kept"], stats["filtered"], stats["top_strategies"], left_out)
