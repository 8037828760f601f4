"""Small statistics shared by the report stages: JSON-safe floats and z-scores."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def finite_or_none(x: Any) -> float | None:
    """A plain float for JSON, or None where the value is missing or not finite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def zscore(values: np.ndarray) -> np.ndarray:
    """(x − mean) / std over the finite values (population std); NaN and constant columns give 0."""
    x = np.asarray(values, dtype=float)
    finite = np.isfinite(x)
    out = np.zeros_like(x)
    if finite.sum() < 2:
        return out
    mean, std = x[finite].mean(), x[finite].std()
    if not std > 1e-12 * max(1.0, abs(mean)):
        return out
    out[finite] = (x[finite] - mean) / std
    return out
