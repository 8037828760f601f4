"""influence: featurize rows into gradient stores, score every candidate's influence on each eval
task, and run the swift study (each strategy against a baseline, in-task and cross-task).
It may import gradients, store, model and io.
"""

from curator.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curator.influence.indexing": ("Featurizer", "IndexResult", "index_file", "index_rows"),
        "curator.influence.scoring": ("ScoringSpace", "influence_scores", "open_space", "top_k"),
        "curator.influence.study": ("run_study", "write_report"),
    },
)
