"""The metric names and their directions, in one place (no heavy imports: the CLI reads these for --help).

Alignment metrics (higher = closer to the target model's own outputs): embedding, hidden,
rouge-l, token-f1, answer, and the combined z-scored ``alignment``. Likelihood metrics (lower =
better): perplexity and self-aligned perplexity (sappl).
"""

from __future__ import annotations

from curator.errors import InputError

ALIGNMENT_METRICS = ("embedding", "hidden", "rouge-l", "token-f1", "answer")
LIKELIHOOD_METRICS = ("perplexity", "sappl")
ALL_METRICS = ALIGNMENT_METRICS + LIKELIHOOD_METRICS
COMBINED = "alignment"
HIGHER_IS_BETTER = frozenset(ALIGNMENT_METRICS + (COMBINED,))
LOWER_IS_BETTER = frozenset(LIKELIHOOD_METRICS)


def unknown_metric(name: str) -> InputError:
    return InputError(f"unknown metric {name!r}: use one of {', '.join(ALL_METRICS)}")


def parse_metrics(text: str) -> list[str]:
    """Metric names from a comma list (``"rouge-l, answer"``): stripped, deduplicated, validated."""
    out: list[str] = []
    for piece in text.split(","):
        name = piece.strip().lower().replace("_", "-")
        if not name:
            continue
        if name not in ALL_METRICS:
            raise unknown_metric(piece.strip())
        if name not in out:
            out.append(name)
    if not out:
        raise InputError(f"no metric given: name one or more of {', '.join(ALL_METRICS)}, separated by commas")
    return out
