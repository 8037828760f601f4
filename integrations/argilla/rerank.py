"""The listener's re-ranker: the queue of pending records whose ranking suggestion is owed a rewrite,
and the flush that writes them.

``Listener.accept`` counts an event and queues the pending neighbours; ``flush`` (run by
``webhook.rerank_loop`` beside the web server, or by ``Listener.handle`` in-line) takes the whole
queue, so a record queued by several events is re-ranked once with the tally as it is then, and
writes the suggestions ``workers`` at a time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from curator.integrations.argilla.mapping import slot, suggestion_score
from curator.integrations.argilla.tally import adjusted_scores, rerank, slot_strategies

SCORE_TOLERANCE = 0.05  # a re-ranking that keeps the order and moves no score by this much is not written (the order is what the UI pre-fills)


class Reranking:
    """The re-ranking half of ``Listener`` (which holds the state these methods read)."""

    queue: dict[str, tuple[int, dict[str, Any]]]
    suggested: dict[str, tuple[list[str], list[float] | None]]

    def pending(self) -> int:
        """Neighbours queued for re-ranking and not yet written."""
        with self._lock:
            return len(self.queue)

    def settled(self) -> bool:
        """Nothing queued and no flush under way: every counted event's re-ranking is written."""
        with self._lock:
            return not self.queue and not self._flushing.locked()

    def _plan(self, nb: str) -> tuple[list[str], list[float]] | None:
        """The ranking suggestion ``nb`` should have under the tally now, or None when it needs none
        (deleted, submitted meanwhile, or holding no strategies). Called under the lock."""
        if nb not in self.meta or nb in self.deleted or self.tally.is_submitted(nb):
            return None
        info = slot_strategies(self.meta[nb])
        if not info:
            return None
        pref = self.tally.preference(sorted({i["strategy"] for i in info.values() if i["strategy"]}))
        adjusted = adjusted_scores(info, pref, self.weight)
        new = rerank(info, pref, self.weight)
        empty = [slot(i) for i in range(1, self.n_slots + 1) if slot(i) not in info]  # placeholders rank last
        return new + empty, [suggestion_score(adjusted[s]) for s in new] + [0.0] * len(empty)

    def _same(self, nb: str, value: list[str], scores: list[float]) -> bool:
        old = self.suggested.get(nb)
        if old is None or old[0] != value or old[1] is None or len(old[1]) != len(scores):
            return False
        return all(abs(a - b) < SCORE_TOLERANCE for a, b in zip(old[1], scores))

    def flush(self) -> list[dict[str, Any]]:
        """Re-rank everything queued, with the tally as it is now: each queued neighbour once, the
        writes ``workers`` at a time. Logs a line per neighbour and a ``flush`` line; returns the
        neighbour lines. A write that fails after the retries stays queued, and the first such error is raised."""
        with self._flushing:
            with self._lock:
                if not self.queue:
                    return []
                taken, self.queue = self.queue, {}
                top = max(seq for seq, _ in taken.values())
                tally = self.tally.as_dict()
                plans = {nb: self._plan(nb) for nb in taken}
            work = [(nb, plan) for nb, plan in plans.items() if plan is not None]
            unknown = [nb for nb, _ in work if nb not in self.suggested]
            for nb in unknown:  # a record read without its suggestions (every read takes them, so this is rare)
                try:
                    old = self.ranking_suggestion(nb)
                except Exception:  # noqa: BLE001  (only the log's old_ranking needs it: write regardless)
                    continue
                if old is not None:
                    self.suggested.setdefault(nb, (old, None))

            olds = {nb: (self.suggested.get(nb) or (None, None))[0] for nb, _ in work}

            def write(item: tuple[str, tuple[list[str], list[float]]]) -> tuple[str, BaseException | None, bool]:
                nb, (value, scores) = item
                if self._same(nb, value, scores):
                    return nb, None, False
                try:
                    self.put_ranking(nb, value, scores)
                except Exception as exc:  # noqa: BLE001  (kept queued; raised after the others are done)
                    return nb, exc, False
                return nb, None, True

            if len(work) > 1 and self.workers > 1:
                with ThreadPoolExecutor(max_workers=min(self.workers, len(work)), thread_name_prefix="curator-rerank") as pool:
                    results = list(pool.map(write, work))
            else:
                results = [write(w) for w in work]
            lines, failed = [], []
            with self._lock:
                for (nb, (value, scores)), (_, exc, written) in zip(work, results):
                    seq, cause = taken[nb]
                    if exc is not None:
                        failed.append((nb, exc))
                        if nb not in self.queue and nb in self.meta:  # a record deleted meanwhile is not retried
                            self.queue[nb] = taken[nb]
                        continue
                    old = olds.get(nb)
                    lines.append({**cause, "tally": tally, "neighbour": nb, "old_ranking": old, "new_ranking": value, "written": written})
                through = top if not failed else min(taken[nb][0] for nb, _ in failed) - 1
                flush_line = {"event": "flush", "through": through, "reranked": sum(1 for e in lines if e["written"]), "unchanged": sum(1 for e in lines if not e["written"]),
                              "skipped": len(taken) - len(work), "failed": len(failed), "tally": tally}
                if failed:
                    flush_line["error"] = f"{type(failed[0][1]).__name__}: {failed[0][1]}"
                self._log(*lines, flush_line)
            if failed:
                raise failed[0][1]
            return lines
