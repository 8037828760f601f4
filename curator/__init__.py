"""curator: pick the candidate responses and generation strategies that belong in a fine-tuning set.

Two signals, neither of which retrains anything: **influence** (per-example LoRA gradients of the
target model, randomly projected into a store that FAISS searches) and **alignment** (how closely
a candidate matches outputs sampled from the target model). The core library never imports the
CLI, Argilla or click.

The rooms, lowest first: ``io`` (rows and tables), ``model`` (the target LM and sampling),
``gradients``, ``store``, ``influence``, ``alignment``, ``generation`` (candidates per strategy,
from a local model or an OpenAI-compatible server), ``curation`` (ranking, annotations, export)
and ``validation``. The verbs a notebook needs are importable from here, lazily: nothing
heavy (torch, pandas, FAISS) is imported until one is used. See docs/library.md.
"""

from curator.lazy import lazy_exports

__version__ = "0.1.0"

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curator.config": ("DeviceConfig", "GradientConfig", "IndexConfig", "LoraSettings", "ProjectionConfig"),
        "curator.errors": ("CuratorError", "InputError"),
        "curator.io.data": ("load_candidates", "load_eval", "load_prompts"),
        "curator.io.tables": ("read_table", "write_table"),
        "curator.model.models": ("load_model",),
        "curator.model.sampling": ("SamplingConfig",),
        "curator.gradients.warmup": ("WarmupConfig", "warmup"),
        "curator.store.store": ("GradientStore",),
        "curator.influence.indexing": ("Featurizer", "index_file", "index_rows"),
        "curator.influence.scoring": ("influence_scores", "open_space", "top_k"),
        "curator.influence.study": ("run_study", "write_report"),
        "curator.alignment.align": ("AlignConfig", "align_file", "score_candidates"),
        "curator.alignment.selection": ("select_strategy", "write_selection_report"),
        "curator.generation.generate": ("GenerateConfig", "GeneratorSpec", "generate_file"),
        "curator.generation.remote": ("RemoteConfig",),
        "curator.curation.ranking": ("RankingWeights", "rank_candidates"),
        "curator.curation.export": ("ExportConfig", "export"),
        "curator.validation.run": ("ValidateConfig", "run_validate"),
        "curator.demo": ("run_demo",),
    },
)
