"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (no ties expected in continuous data)."""
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def pairwise_cos(x: np.ndarray) -> np.ndarray:
    """Upper-triangle cosines of the rows of x."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    iu = np.triu_indices(len(x), k=1)
    return sim[iu]


def dead_pid() -> int:
    """The pid of a process that has just exited (for stale-lock and stale-temp tests)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
