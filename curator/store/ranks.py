"""What each rank of a torchrun job writes into one store, and how rank 0 folds it in.

Every rank writes its own parts into ``STORE/parts/`` under rank-scoped names
(``part-JJJJJ-rRRRR-NNNNN``: job J, rank R) and records its commits in a journal of its own,
``STORE/ranks/job-JJJJJ-rank-RRRRR.json``: the same shape as the manifest (identity, rows,
parts), plus the rows the rank was given (``held``). A journal is replaced atomically after each
committed batch, so a killed rank leaves the batches it finished. No rank but 0 ever writes the
manifest: after the job's barrier, rank 0 folds the journals into it in (job, rank) order, and a
later run, with any number of ranks, folds whatever a killed job left before it looks at which
rows are done. A folded journal's name is kept in the manifest (``folded``), so a fold cut short
between writing the manifest and deleting the journal is never counted twice.

This module knows journal files as plain values; the store (curator.store.store) owns the
manifest and does the folding.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

JOURNALS = "ranks"
_JOURNAL = re.compile(r"job-(\d{5,})-rank-(\d{5,})\.json")


def journal_name(job: int, rank: int) -> str:
    return f"{JOURNALS}/job-{job:05d}-rank-{rank:05d}.json"


def part_prefix(job: int, rank: int) -> str:
    return f"part-{job:05d}-r{rank:04d}-"


def journals(store: Path) -> list[tuple[int, int, Path]]:
    """(job, rank, file) of every journal in ``store``, in (job, rank) order."""
    found = []
    for f in (store / JOURNALS).glob("job-*-rank-*.json"):
        m = _JOURNAL.fullmatch(f.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), f))
    return sorted(found)


def read_journal(f: Path) -> dict[str, Any] | None:
    """A journal's content, or None when it is unreadable (a kill before its first write cannot
    leave one: journals are replaced atomically)."""
    try:
        j = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return j if isinstance(j, dict) and isinstance(j.get("parts"), list) else None


def describe_held(journal: dict[str, Any]) -> str:
    """``rows 51-100 of data.jsonl (20 committed)``: what a rank was given and how far it got."""
    held = journal.get("held") or {}
    n = int(held.get("rows", 0))
    if not n:
        return "no rows"
    where = f" of {held['source']}" if held.get("source") else ""
    return f"rows {held.get('first', '?')}-{held.get('last', '?')}{where} ({n} rows, {int(journal.get('rows', 0))} committed)"


def dead_ranks(store: Path, job: int, host: str) -> list[tuple[int, str]]:
    """(rank, what it held) for the ranks of ``job`` on ``host`` whose process is gone."""
    from curator.io.atomic import pid_alive

    gone = []
    for j_job, rank, f in journals(store):
        j = read_journal(f) if j_job == job else None
        held = (j or {}).get("held") or {}
        if j is not None and held.get("host") == host and isinstance(held.get("pid"), int) and not pid_alive(held["pid"]):
            gone.append((rank, describe_held(j)))
    return gone


def rank_failure(store: Path, rank: int) -> str | None:
    """What ``rank`` held in the newest job of ``store``, from its journal (None when none is left)."""
    mine = [f for _, r, f in journals(store) if r == rank]
    j = read_journal(mine[-1]) if mine else None
    return None if j is None else describe_held(j)
