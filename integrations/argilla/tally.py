"""The listener's strategy tally and re-ranking arithmetic: pure functions, no I/O.

**What a vote is.** Each annotator's *submitted* response to a record votes for at most two
strategies: the strategy of the candidate they ranked first (placeholder slots, which hold no
candidate, are skipped; a tie for first goes to the earliest slot, as ``curator argilla pull``
orders it), and their ``best_strategy`` label. Drafts and discarded responses vote for nothing.

**Why a keyed tally.** The tally holds one entry per (record id, user id): that annotator's
response to that record as last seen. Applying an event replaces the entry, so an edited response
(``response.updated``) moves its votes instead of adding more, a redelivered webhook applies the
same entry again and changes nothing, and a deleted, discarded or drafted response leaves an entry
that votes for nothing. The votes per strategy are the sum over the entries: what a recount of a
pulled file gives.

**Why stamps.** The server redelivers a failed webhook 10 s, 1 min and 3 min later, so an old event
can arrive after a newer one. Each entry keeps the stamp of what set it (the response's
``updated_at``; a deletion's event time) and an older event is ignored. After a restart the tally
is rebuilt from the server, and an event from before that read about a response the read did not
see (deleted meanwhile) is ignored too (the ``floor``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from curator.curation.annotations import rank_groups
from curator.errors import InputError
from curator.integrations.argilla.mapping import BEST, RANKING, slot_candidates

Votes = tuple[str, ...]  # the strategies one annotator's response on one record votes for (0 to 2)
Key = tuple[str, str]  # (record id, user id)
Stamp = tuple[datetime, int]  # (when, 1 for a deletion): a later stamp wins; at the same moment a deletion wins


def stamp_of(when: Any, deletion: bool = False) -> Stamp | None:
    """A stamp from a server time (ISO text or datetime; naive means UTC); None when there is none."""
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(when, datetime):
        return None
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return (when, 1 if deletion else 0)


@dataclass(frozen=True)
class Entry:
    """One annotator's response to one record, as last applied."""

    submitted: bool
    votes: Votes
    stamp: Stamp | None


class Tally:
    """Votes per strategy, kept as each (record, annotator)'s current response.

    ``floor`` (server time, naive UTC) is when the server was read to rebuild the tally: an event
    stamped before it about a response that read did not hold is stale.
    """

    def __init__(self, floor: datetime | None = None) -> None:
        self.floor = floor
        self._entries: dict[Key, Entry] = {}
        self._votes: Counter[str] = Counter()
        self._submitted: Counter[str] = Counter()  # record → submitted responses
        self._users: dict[str, set[str]] = {}  # record → users with an entry

    @property
    def votes(self) -> Counter[str]:
        """Votes per strategy: the sum over every submitted (record, annotator) entry (strategies at 0 left out)."""
        return Counter(self._votes)

    def as_dict(self) -> dict[str, int]:
        """The votes per strategy, by strategy name (what the log records)."""
        return dict(sorted(self._votes.items()))

    def entries(self) -> dict[Key, Votes]:
        """(record id, user id) → votes, for the submitted responses."""
        return {k: e.votes for k, e in self._entries.items() if e.submitted}

    def get(self, record: str, user: str) -> Votes | None:
        """The annotator's votes on the record, or None when no submitted response of theirs counts."""
        e = self._entries.get((record, user))
        return e.votes if e is not None and e.submitted else None

    def is_submitted(self, record: str) -> bool:
        """Whether any annotator's submitted response to the record counts."""
        return record in self._submitted

    def submitted_records(self) -> int:
        """How many records have a submitted response that counts."""
        return len(self._submitted)

    def users(self, record: str) -> set[str]:
        """The users with an entry (submitted or not) for the record."""
        return set(self._users.get(record, ()))

    def apply(self, record: str, user: str, votes: Iterable[str] | None, stamp: Stamp | None = None, from_server: bool = False) -> str:
        """Set the annotator's response to the record: ``votes`` for a submitted one, None for one
        that is not (or no longer) submitted. Returns "changed", "same" or "stale" (older than what
        the entry holds, or than the floor for a response the rebuild did not see, unless
        ``from_server``: a read of the server's state)."""
        key = (record, user)
        old = self._entries.get(key)
        if stamp is not None:
            if old is not None and old.stamp is not None and stamp < old.stamp:
                return "stale"
            if old is None and not from_server and self.floor is not None and stamp[0] < self.floor:
                return "stale"
        new = Entry(votes is not None, tuple(v for v in votes or () if v), stamp)
        self._entries[key] = new
        self._users.setdefault(record, set()).add(user)
        if old is not None and (old.submitted, old.votes) == (new.submitted, new.votes):
            return "same"
        if old is not None and old.submitted:
            self._count(record, old.votes, -1)
        if new.submitted:
            self._count(record, new.votes, +1)
        return "changed" if (old is not None and old.submitted) or new.submitted else "same"

    def withdraw(self, record: str, user: str, stamp: Stamp | None = None) -> str:
        """The annotator's response was deleted, discarded or put back to draft: it votes for nothing."""
        return self.apply(record, user, None, stamp)

    def drop_record(self, record: str) -> bool:
        """Forget every entry of a record that no longer exists; True if that changed the votes."""
        changed = False
        for user in self._users.pop(record, set()):
            e = self._entries.pop((record, user))
            if e.submitted:
                self._count(record, e.votes, -1)
                changed = True
        return changed

    def preference(self, strategies: list[str]) -> dict[str, float]:
        """Each strategy's vote share minus the uniform share (0 for all when there are no votes)."""
        total = sum(self._votes[s] for s in strategies)
        if not strategies or total == 0:
            return {s: 0.0 for s in strategies}
        return {s: self._votes[s] / total - 1.0 / len(strategies) for s in strategies}

    def _count(self, record: str, votes: Votes, sign: int) -> None:
        self._submitted[record] += sign
        if self._submitted[record] <= 0:
            del self._submitted[record]
        self._votes.update({v: sign * n for v, n in Counter(votes).items()})
        for s in [s for s, n in self._votes.items() if n <= 0]:
            del self._votes[s]


def slot_strategies(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """slot → {strategy, score}, in slot order, for the slots of a record's metadata that hold a candidate."""
    n = max((int(k.rsplit("_", 1)[1]) for k in meta if k.startswith("candidate_id_")), default=0)
    return {s: {"strategy": meta.get(f"strategy_{s.rsplit('_', 1)[1]}"), "score": meta.get(f"score_{s.rsplit('_', 1)[1]}")} for s in slot_candidates(dict(meta), n)}


def top_slot(ranking: Any, slots: list[str] | None = None) -> str | None:
    """The slot ranked first: among ``slots`` when given (placeholders dropped, ties to the earliest
    slot, as pull orders them), else among every ranked value (ties to the smallest name)."""
    if not ranking:
        return None
    if slots is not None:
        try:
            groups = rank_groups(ranking, slots)
        except InputError:
            return None
        return groups[0][0] if groups else None
    items = [(r.get("rank") or k + 1, r.get("value")) if isinstance(r, dict) else (k + 1, r) for k, r in enumerate(ranking)]
    return min(items, key=lambda x: (x[0], str(x[1])))[1]


def value_of(values: Mapping[str, Any] | None, question: str) -> Any:
    """A response's answer to ``question`` (the API wraps each answer as ``{"value": ...}``)."""
    v = (values or {}).get(question)
    return v.get("value") if isinstance(v, dict) else getattr(v, "value", v)


def top_strategy(values: Mapping[str, Any] | None, slots: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The strategy of the candidate a response ranked first (None without a ranking)."""
    top = top_slot(value_of(values, RANKING), list(slots))
    return slots[top].get("strategy") if top in slots else None


def response_votes(values: Mapping[str, Any] | None, slots: Mapping[str, Mapping[str, Any]]) -> Votes:
    """A submitted response's votes: the top-ranked candidate's strategy, then the best-strategy label."""
    return tuple(str(s) for s in (top_strategy(values, slots), value_of(values, BEST)) if s)


def counted_votes(status: Any, values: Mapping[str, Any] | None, slots: Mapping[str, Mapping[str, Any]]) -> Votes | None:
    """What a response counts: its votes when it is submitted, None otherwise (draft, discarded)."""
    return response_votes(values, slots) if str(getattr(status, "value", status)) == "submitted" else None


def adjusted_scores(slots: dict[str, dict[str, Any]], preference: dict[str, float], weight: float) -> dict[str, float]:
    """Each slot's curator score (missing → 0) + weight × its strategy's preference.

    ``slots`` maps slot name → {"strategy": str, "score": float | None}.
    """
    out = {}
    for name, s in slots.items():
        base = s.get("score")
        base = 0.0 if base is None or not math.isfinite(base) else float(base)
        out[name] = base + weight * preference.get(s.get("strategy") or "", 0.0)
    return out


def rerank(slots: dict[str, dict[str, Any]], preference: dict[str, float], weight: float) -> list[str]:
    """Slots best first by ``adjusted_scores`` (ties by slot name)."""
    adjusted = adjusted_scores(slots, preference, weight)
    return sorted(adjusted, key=lambda name: (-adjusted[name], name))
