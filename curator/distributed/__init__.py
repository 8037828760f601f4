"""distributed: running one job on many processes and nodes, launched by torchrun.

The process group of a torchrun job (gloo on the CPU, nccl on CUDA), the few collectives a stage
needs to agree on its settings and share its plan, a deterministic cost-balanced split of the
work, and ``curator index --nproc N``'s one-node launch through torchrun's own launcher. It knows
nothing of models, stores or scores: the stages above it (influence, alignment) use it.
It may import io.
"""

from curator.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curator.distributed.group": ("Group", "PeerError", "join", "launched"),
        "curator.distributed.split": ("balanced_ranges",),
        "curator.distributed.launch": ("launch_local",),
    },
)
