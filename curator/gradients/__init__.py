"""gradients: the per-example LoRA gradient of the response loss, batched from hooks and checked
against a one-at-a-time oracle, its random projection, and the Adam warm-up that LESS needs.
It may import model and io; it never imports store.
"""

from curator.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curator.gradients.computer": ("GradientComputer", "attach_lora", "lora_parameters", "response_loss"),
        "curator.gradients.fastgrad": ("iter_per_example_gradients", "per_example_gradients"),
        "curator.gradients.projection": ("Projector", "normalize"),
        "curator.gradients.warmup": ("WarmupConfig",),
    },
)
