"""curation: what annotators see and what comes back. Ranks candidates by both signals, reads
and aggregates annotators' rankings, and exports curated SFT and DPO sets with a card.
It may import influence, alignment and io. (``curator.export`` is the export verb itself.)
"""

from curator.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curator.curation.ranking": ("RankingWeights", "rank_candidates"),
        "curator.curation.annotations": ("aggregate", "kendalls_w", "read_pulled", "summarize"),
        "curator.curation.export": ("ExportConfig", "ExportResult", "build_rows", "write_rows"),
    },
)
