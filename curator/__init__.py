"""curator: pick the candidate responses and generation strategies that belong in a fine-tuning set.

The core library computes gradient influence (per-example LoRA gradients, randomly projected,
searched with FAISS) and keeps its own on-disk store. It never imports the CLI or Argilla.
"""

__version__ = "0.1.0"
