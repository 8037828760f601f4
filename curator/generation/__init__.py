"""generation: each strategy's candidate responses for a file of prompts, from a local model or
any OpenAI-compatible server, resumable, with provenance per row.
It may import alignment (the answer extractor of ``--verify answer``), model, store (the writer
lock) and io.
"""

from curator.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curator.generation.generate": ("GenerateConfig", "GenerateResult", "GeneratorSpec", "generate_file", "select_prompts"),
        "curator.generation.strategies": ("BUILT_IN", "Strategy", "load_file", "resolve"),
        "curator.generation.remote": ("RemoteConfig", "normalise_url"),
    },
)
