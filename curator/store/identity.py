"""What makes two gradient stores' vectors the same kind: the manifest fields that must agree.

A resumed run, or a rank of a torchrun job, must match the store on ``IDENTITY_FIELDS``; a train
store and an eval store must share ``COMPARABLE_FIELDS`` to be compared. The device that made
the vectors is recorded (``gradient.device``) but in neither list.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from curator.errors import MismatchError

# The settings that define a store's vectors: two stores (or a resumed run) must agree on them.
IDENTITY_FIELDS = ("role", "model.fingerprint", "lora", "projection", "gradient.kind", "gradient.checkpoint", "gradient.max_length", "gradient.dtype")
# The settings a train store and an eval store must share to be compared.
COMPARABLE_FIELDS = ("model.fingerprint", "lora", "projection", "gradient.checkpoint")


def get(d: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        d = d.get(key) if isinstance(d, dict) else None  # type: ignore[assignment]
    return d


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:117] + "..."


def compare_manifests(a: dict[str, Any], b: dict[str, Any], fields: Iterable[str], a_name: str, b_name: str) -> None:
    """Raise MismatchError naming the first field where ``a`` and ``b`` differ, with both values."""
    for f in fields:
        va, vb = get(a, f), get(b, f)
        if va != vb:
            raise MismatchError(f"{a_name} and {b_name} differ in {f}: {_short(va)} vs {_short(vb)}: rebuild one of them with the same settings")


