"""A deterministic, cost-balanced split of ordered work across ranks.

Each rank takes one contiguous range of the work list, cut where the running cost crosses
``r * total / world``. Contiguous ranges keep the rows of a store built by N ranks in the same
order as one process would write them (rank 0's range first), and make "the rows rank r held"
a range a person can read. Every rank computes the same split from the same list: no message
is needed to agree on it.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from typing import Sequence


def balanced_ranges(costs: Sequence[float], world: int) -> list[tuple[int, int]]:
    """``world`` half-open ranges ``[lo, hi)`` covering ``costs`` in order, each near total/world.

    A range may be empty when there are fewer items than ranks. Costs must be >= 0; an item of
    zero cost still belongs to exactly one range.
    """
    if world < 1:
        raise ValueError(f"world size {world} < 1")
    if any(c < 0 for c in costs):
        raise ValueError("costs must be >= 0")
    n = len(costs)
    cum = list(accumulate(float(c) for c in costs))
    total = cum[-1] if cum else 0.0
    cuts = [0]
    for r in range(1, world):
        if total > 0:
            # first item whose running cost passes r/world of the total ends range r-1 after it
            target = total * r / world
            i = bisect_left(cum, target)
            cut = i + 1 if i < n and cum[i] - target <= target - (cum[i - 1] if i else 0.0) else i
        else:
            cut = (n * r) // world
        cuts.append(min(n, max(cuts[-1], cut)))
    cuts.append(n)
    return [(cuts[r], cuts[r + 1]) for r in range(world)]
