"""alignment: how closely each candidate matches outputs sampled from the target model, with
perplexity and self-aligned perplexity beside it, and the strategy the scores select.
It may import model and io.
"""

from curator.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curator.alignment.align": ("AlignConfig", "AlignResult", "align_file", "score_candidates"),
        "curator.alignment.similarity": ("extract_answer", "score_alignment"),
        "curator.alignment.likelihood": ("perplexity", "self_aligned_perplexity"),
        "curator.alignment.selection": ("select_strategy", "write_selection_report"),
        "curator.alignment.metrics": ("ALIGNMENT_METRICS", "ALL_METRICS"),
    },
)
