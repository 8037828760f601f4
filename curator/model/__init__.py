"""model: the target causal LM. Loads it (the bundled SmolLM2, a tiny random Llama, or any local
or cached HF model), renders and tokenizes rows for it, and samples outputs from it.
It may import io.
"""

from curator.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curator.model.models": ("DEFAULT_MODEL", "LoadedModel", "fingerprint", "load_model"),
        "curator.model.encoding": ("Encoded", "encode", "render"),
        "curator.model.sampling": ("SamplingConfig", "SamplingStats", "sample_outputs"),
    },
)
