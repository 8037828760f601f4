"""The dataset card of an export: provenance, counts and filters, strategies, scores, agreement
(Kendall's W, Krippendorff's alpha, anchoring) and the schema. It is the README of a folder export
and of a Hub push, and ``<stem>.README.md`` beside a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curator import __version__



def _fmt(x: float) -> str:
    return f"{x:.3g}"


def render_card(stats: dict[str, Any], cfg: Any, source: Path, out: Path, exported_at: str) -> str:
    """The dataset card: provenance, counts, filters, scores and the schema."""
    src = stats["sources"]
    f = stats["filtered"]
    lines = [
        "---",
        f"tags: [curator, argilla, trl, {cfg.fmt}]",
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
        f"- filtered as pending (no submitted answer): {f['pending']}",
        f"- annotators left out below min annotator agreement ({'none set' if cfg.min_annotator_agreement is None else cfg.min_annotator_agreement}): {', '.join(stats.get('left_out') or []) or 'none'}",
        f"- filtered by min annotators ({cfg.min_annotators}): {f['min_annotators']}",
        f"- filtered by min agreement ({'none' if cfg.min_agreement is None else cfg.min_agreement}): {f['min_agreement']}",
        f"- filtered by strategies ({'all' if cfg.strategies is None else ', '.join(cfg.strategies)}): {f['strategies']}",
    ]
    lines.append(f"- filtered as lacking the answers this format uses (two ordered candidates, a keep/drop label, a rating past the thresholds): {f['no_answers']}")
    if cfg.fmt == "dpo":
        lines += [f"- filtered as every pair at or below the margin ({cfg.min_margin:g}): {f['tied']}", f"- pairs skipped at the margin: {stats['tied_pairs']}", f"- pairs: {cfg.dpo_pairs}, by {cfg.order} order"]
    if cfg.fmt == "sft":
        lines.append(f"- completions: {cfg.sft_from}" + (f" (mean rating >= {cfg.min_rating:g})" if cfg.sft_from == "rated" else ""))
    if cfg.fmt == "kto":
        labels = stats["labels"] or {}
        lines.append(f"- labels from {cfg.kto_from} (ratings: desirable >= {cfg.min_rating:g}, undesirable <= {cfg.max_rating:g}): {labels.get(True, 0)} desirable, {labels.get(False, 0)} undesirable")
    lines += ["", "## Strategies", "Strategy of each exported candidate (the chosen one, for DPO):"]
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
    alpha = (stats.get("review") or {}).get("alpha") or {}
    shown = [f"{k} {_fmt(v)}" for k, v in alpha.items() if v is not None]
    lines.append("- Krippendorff's alpha (rankings and ratings ordinal, labels nominal): " + (", ".join(shown) if shown else "n/a (fewer than two annotators per item)"))
    anc = (stats.get("review") or {}).get("anchoring")
    if anc and anc["overall"]["n"]:
        lines.append(f"- anchoring on curator's suggestion: {anc['overall']['verdict']}")
    match = stats["suggestion_top_match"]
    if match:
        lines.append(f"- annotators' top choice equals curator's suggested top in {match['matched']} of {match['records']} records")
    schema = _SCHEMA[f"{cfg.fmt}_{'chat' if stats['chat'] else 'text'}"]
    lines += ["", "## Schema", schema, ""]
    return "\n".join(lines)


_PROV_SFT = "provenance: record_id, group, task, candidate_id, strategy, n_annotators, agreement (Kendall's W), dataset"
_PROV_DPO = "provenance: record_id, group, task, chosen_id, rejected_id, chosen_strategy, rejected_strategy, chosen_rank, rejected_rank, margin, margin_kind (rank or rating), n_annotators, agreement, dataset"
_PROV_KTO = "provenance: record_id, group, task, candidate_id, strategy, rating (mean), kto_from, n_annotators, agreement, dataset"
_SCHEMA = {
    "sft_text": f"TRL prompt-completion: `prompt` (str), `completion` (str); {_PROV_SFT}, and for kept/rated completions rating and label.",
    "sft_chat": f"TRL conversational: `messages` (the prompt's messages + the candidate as the assistant turn); {_PROV_SFT}, and for kept/rated completions rating and label.",
    "dpo_text": f"TRL preference: `prompt`, `chosen`, `rejected` (str); {_PROV_DPO}.",
    "dpo_chat": f"TRL conversational preference: `prompt` (messages), `chosen`, `rejected` (one assistant message each); {_PROV_DPO}.",
    "kto_text": f"TRL unpaired preference: `prompt` (str), `completion` (str), `label` (bool: desirable); {_PROV_KTO}.",
    "kto_chat": f"TRL conversational unpaired preference: `prompt` (messages), `completion` (one assistant message), `label` (bool); {_PROV_KTO}.",
}
