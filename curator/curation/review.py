"""How far a pulled set of annotations can be trusted: agreement, each annotator against the
consensus, and anchoring on curator's pre-filled suggestion. Pure functions over pulled rows.

- **Kendall's W** per record (already in the pulled rows), summarised.
- **Krippendorff's alpha** over the whole set: ordinal over rankings (units: each record's
  candidates, values: fractional ranks), ordinal over 1-5 ratings, nominal over keep/drop labels
  (units: each record's candidates). Missing answers are allowed.
- **Each annotator against the consensus**: the mean Kendall tau-b between the annotator's ranking
  and the aggregated ranking, over the records the annotator ranked.
- **Anchoring** (``agreement.anchoring``): how often each annotator submits curator's suggested
  order unchanged, and the agreement with the suggestion set against agreement between annotators.

``without_annotators`` re-aggregates rows with some annotators left out (``curator export
--min-annotator-agreement``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from curator.curation.agreement import anchoring, kendall_tau, krippendorff_alpha
from curator.curation.annotations import aggregate, fractional_ranks, rank_groups


def _fractional(entries: list[dict[str, Any]]) -> dict[str, float]:
    """candidate id → fractional rank, from a pulled ranking ``[{candidate_id, rank}]`` (ties share a rank)."""
    ids = [str(e["candidate_id"]) for e in entries]
    groups = rank_groups([{"value": str(e["candidate_id"]), "rank": e["rank"]} for e in entries], ids)
    return fractional_ranks(groups, ids)


def _strict(order: list[str]) -> dict[str, float]:
    return {str(c): float(k + 1) for k, c in enumerate(order)}


def _user(a: Mapping[str, Any]) -> str:
    return str(a.get("username") or a.get("user_id"))


def summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Agreement, per-annotator and anchoring figures over the submitted rows of a pulled file."""
    rows = [r for r in rows if r.get("status") == "submitted"]
    rank_units: list[dict[str, float]] = []
    rating_units: list[dict[str, float]] = []
    label_units: list[dict[str, str]] = []
    taus: dict[str, list[float]] = {}
    submissions: list[dict[str, Any]] = []
    for r in rows:
        consensus = _strict(r.get("ranking") or [])
        suggested = _strict(r.get("suggested_ranking") or []) or None
        per_cand_rank: dict[str, dict[str, float]] = {}
        per_cand_rating: dict[str, dict[str, float]] = {}
        per_cand_label: dict[str, dict[str, str]] = {}
        for a in r.get("annotations") or []:
            u = _user(a)
            if a.get("ranking"):
                fr = _fractional(a["ranking"])
                for cid, v in fr.items():
                    per_cand_rank.setdefault(cid, {})[u] = v
                if consensus:
                    t = kendall_tau(fr, consensus)
                    if t is not None:
                        taus.setdefault(u, []).append(t)
                submissions.append({"record_id": str(r["record_id"]), "user": u, "ranking": fr, "suggested": suggested})
            for x in a.get("ratings") or []:
                per_cand_rating.setdefault(str(x["candidate_id"]), {})[u] = float(x["rating"])
            for x in a.get("labels") or []:
                per_cand_label.setdefault(str(x["candidate_id"]), {})[u] = str(x["label"])
        rank_units += list(per_cand_rank.values())
        rating_units += list(per_cand_rating.values())
        label_units += list(per_cand_label.values())
    ws = [float(r["agreement"]) for r in rows if isinstance(r.get("agreement"), (int, float)) and r["agreement"] == r["agreement"]]
    return {
        "records": len(rows),
        "kendalls_w": {"n": len(ws), "mean": sum(ws) / len(ws) if ws else None, "min": min(ws) if ws else None},
        "alpha": {
            "rankings": krippendorff_alpha(rank_units, "ordinal") if rank_units else None,
            "ratings": krippendorff_alpha(rating_units, "ordinal") if rating_units else None,
            "labels": krippendorff_alpha(label_units, "nominal") if label_units else None,
        },
        "annotators": {u: {"records": len(ts), "tau_with_consensus": sum(ts) / len(ts)} for u, ts in sorted(taus.items())},
        "anchoring": anchoring(submissions) if submissions else None,
    }


def low_agreement_annotators(stats: Mapping[str, Any], threshold: float) -> list[str]:
    """Annotators whose mean tau against the consensus is below ``threshold``."""
    return sorted(u for u, s in stats["annotators"].items() if s["tau_with_consensus"] < threshold)


def without_annotators(rows: list[dict[str, Any]], dropped: set[str]) -> list[dict[str, Any]]:
    """The rows re-aggregated with the answers of ``dropped`` annotators left out (a record left
    with no answer becomes pending). The pull's aggregation method is kept."""
    out = []
    for r in rows:
        keep = [a for a in r.get("annotations") or [] if _user(a) not in dropped]
        if len(keep) == len(r.get("annotations") or []) or r.get("status") != "submitted":
            out.append(r)
            continue
        slots = {str(c["slot"]): str(c["id"]) for c in r["candidates"]}
        slot_of = {cid: s for s, cid in slots.items()}
        rec = {
            "id": r["record_id"], "slots": slots, "status": "submitted" if keep else "pending",
            "rankings": {_user(a): [{"value": slot_of[str(e["candidate_id"])], "rank": e["rank"]} for e in a["ranking"]] for a in keep if a.get("ranking")},
            "ratings": {_user(a): {slot_of[str(x["candidate_id"])]: x["rating"] for x in a.get("ratings") or []} for a in keep},
            "labels": {_user(a): {slot_of[str(x["candidate_id"])]: x["label"] for x in a.get("labels") or []} for a in keep},
            "best_strategy": {_user(a): a.get("best_strategy") for a in keep},
        }
        agg = aggregate([rec], r.get("method") or "borda")[0]
        new = dict(r)
        new.update(
            status=agg["status"], annotations=keep, ranking=agg["ranking"], ranking_scores=agg["ranking_scores"], agreement=agg["agreement"],
            n_annotators=agg["n_annotators"], candidate_ratings=agg["candidate_ratings"], candidate_labels=agg["candidate_labels"],
            best_strategy_votes=[{"strategy": s, "votes": v} for s, v in agg["best_strategy_votes"].items()],
        )
        out.append(new)
    return out


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def render(stats: Mapping[str, Any], source: str) -> str:
    """The agreement report (``<pulled stem>.report.md``)."""
    w, alpha = stats["kendalls_w"], stats["alpha"]
    lines = [
        f"# Agreement report: {source}",
        "",
        f"{stats['records']} submitted records.",
        "",
        "## Agreement between annotators",
        f"- Kendall's W per record (rankings): mean {_num(w['mean'])}, min {_num(w['min'])} over {w['n']} records with two or more annotators",
        f"- Krippendorff's alpha, rankings (ordinal): {_num(alpha['rankings'])}",
        f"- Krippendorff's alpha, ratings (ordinal): {_num(alpha['ratings'])}",
        f"- Krippendorff's alpha, keep/drop labels (nominal): {_num(alpha['labels'])}",
        "",
        "Alpha is 1 for perfect agreement, 0 for agreement at chance level, negative for systematic disagreement; n/a where fewer than two annotators answered the same item.",
        "",
        "## Each annotator against the consensus",
    ]
    if stats["annotators"]:
        lines += ["| annotator | records ranked | mean Kendall tau with the aggregated ranking |", "|---|---|---|"]
        lines += [f"| {u} | {s['records']} | {_num(s['tau_with_consensus'])} |" for u, s in stats["annotators"].items()]
        lines += ["", "`curator export --min-annotator-agreement T` leaves out annotators whose tau is below T."]
    else:
        lines.append("No rankings.")
    lines += ["", "## Anchoring on curator's suggestion"]
    anc = stats["anchoring"]
    if anc is None or not anc["overall"]["n"]:
        lines.append("No ranking was submitted against a suggestion.")
    else:
        o = anc["overall"]
        lines += [
            f"- submissions that kept the suggested order unchanged: {_num(o['unchanged_rate'])} of {o['n']}",
            f"- mean tau with the suggestion: {_num(o['tau_with_suggestion'])}; mean tau between annotators: {_num(o['tau_between_annotators'])} ({o['pairs']} pairs)",
            f"- {o['verdict']}",
            "",
            "| annotator | submissions with a suggestion | unchanged | mean tau with the suggestion |",
            "|---|---|---|---|",
        ]
        lines += [f"| {u} | {s['n']} | {s['unchanged']} ({_num(s['unchanged_rate'])}) | {_num(s['tau_with_suggestion'])} |" for u, s in anc["annotators"].items()]
    return "\n".join(lines) + "\n"
