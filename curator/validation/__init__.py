"""validation: does the prediction hold? Fine-tunes a LoRA per strategy on one budget, measures
the eval set, and checks every predictor's ranking against the measured one.
It may import every room below it: influence, alignment, gradients, store, model and io.
"""

from curator.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curator.validation.run": ("ValidateConfig", "ValidateResult", "run_validate"),
        "curator.validation.finetune": ("EvalConfig", "FinetuneConfig", "evaluate", "train_lora"),
    },
)
