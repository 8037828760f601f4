"""Figures as PNG bytes: matplotlib on its non-interactive backend, every figure closed after use."""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Any, Iterator


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, which needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def closing(fig: Any) -> Iterator[Any]:
    """Close ``fig`` when the block ends, however it ends (pyplot keeps every open figure alive)."""
    try:
        yield fig
    finally:
        pyplot().close(fig)


def png(fig: Any, dpi: int) -> bytes:
    """Lay ``fig`` out and render it as PNG bytes."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
