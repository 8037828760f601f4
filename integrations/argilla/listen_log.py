"""The listener's JSONL log: appended and synced, and read back at start for the re-rankings a
killed run queued and never wrote.

Each counted event's line carries ``seq`` (its number in that run) and ``queued`` (the neighbours it
queued); each flush logs ``{"event": "flush", "through": S}``: every re-ranking queued by an event
with ``seq`` <= S is written. A run starts with a ``start`` line (``seq`` 0, whatever it re-queued).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def append_log(path: Path, *entries: dict[str, Any]) -> None:
    """Append entries (each stamped with the time), then sync the file once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    torn = False
    try:
        with path.open("rb") as fh:  # a line cut short by a kill is ended, so the next entry stays readable
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    except OSError:  # missing or empty
        pass
    with path.open("a", encoding="utf-8") as fh:
        fh.write(("\n" if torn else "") + "".join(json.dumps({"time": stamp, **e}, default=str) + "\n" for e in entries))
        fh.flush()
        os.fsync(fh.fileno())


def unflushed(path: Path) -> list[str]:
    """The neighbours the log's last run queued and never flushed, in the order they were queued."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:  # no log yet
        return []
    queued: dict[str, int] = {}
    through = -1
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if not isinstance(e, dict):
            continue
        if e.get("event") == "start":
            queued, through = {}, -1
        if isinstance(e.get("queued"), list) and isinstance(e.get("seq"), int):
            queued.update({str(rid): e["seq"] for rid in e["queued"]})
        if e.get("event") == "flush" and isinstance(e.get("through"), int):
            through = max(through, e["through"])
    return [rid for rid, seq in queued.items() if seq > through]
