"""Frozen, validated configurations. Each one is saved with the artefact it made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from curator.errors import InputError

GRADIENT_KINDS = ("sgd", "adam")
# --dtype: auto is bf16 on a GPU that supports it, else fp32 (resolved by curator.model.device)
DTYPES = ("auto", "fp32", "bf16", "fp16")
# --attn-implementation: auto is flash-attention varlen for packed batches where flash-attn is installed, else SDPA
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
# The environment variable that sets --device when the option is not given
DEVICE_ENV = "CURATOR_DEVICE"
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter whose parameters the gradients are taken with respect to."""

    r: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    dropout: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.r < 1:
            raise InputError(f"LoRA rank r={self.r} is invalid: use an integer >= 1 (--lora-r)")
        if self.alpha <= 0:
            raise InputError(f"LoRA alpha={self.alpha} is invalid: use a positive number")
        if not self.target_modules:
            raise InputError("LoRA target_modules is empty: name at least one module, e.g. q_proj")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"LoRA dropout={self.dropout} is invalid: use 0 <= dropout < 1")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoraSettings":
        return cls(**{**d, "target_modules": tuple(d["target_modules"])})


PROJECTION_KINDS = ("sparse", "rademacher")


@dataclass(frozen=True)
class ProjectionConfig:
    """Seeded random projection; kind, seed, dim (and nonzeros) define it, so it is never saved.

    ``sparse`` is a sparse JL matrix with ``nonzeros`` entries per input coordinate (the default:
    fast); ``rademacher`` is the dense ±1/sqrt(dim) matrix (slow on large adapters).
    """

    dim: int = 8192
    seed: int = 0
    kind: str = "sparse"
    nonzeros: int = 4

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise InputError(f"projection dim={self.dim} is invalid: use an integer >= 1 (--dim)")
        if self.kind not in PROJECTION_KINDS:
            raise InputError(f"projection kind {self.kind!r} is unknown: use one of {', '.join(PROJECTION_KINDS)} (--projection)")
        if self.kind == "sparse" and not 1 <= self.nonzeros <= self.dim:
            raise InputError(f"projection nonzeros={self.nonzeros} is invalid: use an integer from 1 to dim={self.dim} (--nonzeros)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.kind != "sparse":
            d.pop("nonzeros")  # not part of a dense projection's definition
        return d


@dataclass(frozen=True)
class GradientConfig:
    """Which gradient is featurised: raw (sgd) or Adam-preconditioned, at which checkpoint."""

    kind: str = "sgd"
    max_length: int = 512
    checkpoint: str | None = None
    lr_weight: float = 1.0
    adam_eps: float = 1e-8
    dtype: str = "auto"  # auto: the model's compute dtype (DeviceConfig.dtype, resolved by curator.model.device)
    tokens_per_batch: int | None = None
    gradient_checkpointing: bool = False  # recompute each decoder layer in the backward: long sequences fit

    def __post_init__(self) -> None:
        if self.kind not in GRADIENT_KINDS:
            raise InputError(f"gradient kind {self.kind!r} is unknown: use one of {', '.join(GRADIENT_KINDS)} (--kind)")
        if self.kind == "adam" and not self.checkpoint:
            raise InputError("gradient kind 'adam' needs a warm-up checkpoint with optimizer state: pass --checkpoint DIR (made by `curator warmup`)")
        if self.max_length < 8:
            raise InputError(f"max_length={self.max_length} is too small: use at least 8 (--max-length)")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype {self.dtype!r} is unknown: use one of {', '.join(DTYPES)} (--dtype)")
        if self.tokens_per_batch is not None and self.tokens_per_batch < 1:
            raise InputError(f"--tokens-per-batch {self.tokens_per_batch} is invalid: use an integer >= 1")
        if self.lr_weight <= 0:
            raise InputError(f"lr_weight={self.lr_weight} is invalid: it must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The search types ``curator index --search`` takes, and the parameters each one accepts; the
# defaults are resolved per store by curator.store.search.plan.
SEARCH_TYPES = ("flat", "ivf", "ivfpq", "hnsw")
SEARCH_PARAMS: dict[str, tuple[str, ...]] = {
    "flat": (),
    "ivf": ("nlist", "nprobe"),
    "ivfpq": ("nlist", "nprobe", "m", "nbits", "refine"),
    "hnsw": ("M", "efConstruction", "efSearch"),
}
SEARCH_HINT = "use flat, ivf, ivfpq or hnsw, optionally with parameters as TYPE:key=value,... (e.g. ivf:nlist=1024,nprobe=32)"


@dataclass(frozen=True)
class SearchSpec:
    """A search type and the parameters the user set (the rest are defaults, resolved per store)."""

    type: str = "flat"
    params: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        return self.type + (":" + ",".join(f"{k}={v}" for k, v in self.params) if self.params else "")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "SearchSpec":
        if not d:
            return cls()
        return cls(str(d["type"]), tuple(sorted((str(k), int(v)) for k, v in d.get("params", {}).items())))


def divisors(d: int) -> list[int]:
    """The divisors of ``d``, ascending: the PQ sub-quantizer counts a projection dim allows."""
    return [m for m in range(1, d + 1) if d % m == 0]


def parse_search(text: str, dim: int | None = None) -> SearchSpec:
    """Parse ``TYPE[:key=value,...]``; raise InputError with a one-line fix for anything invalid."""
    kind, _, rest = str(text).strip().partition(":")
    kind = kind.strip().lower()
    if kind not in SEARCH_TYPES:
        raise InputError(f"--search {text!r} is unknown: {SEARCH_HINT}")
    params: dict[str, int] = {}
    for item in (x for x in rest.split(",") if x.strip()) if rest.strip() else ():
        key, eq, val = (s.strip() for s in item.partition("="))
        if key not in SEARCH_PARAMS[kind]:
            allowed = ", ".join(SEARCH_PARAMS[kind]) or "none"
            raise InputError(f"--search {text}: {kind} has no parameter {key!r}: its parameters are {allowed}")
        if not eq or not val.isdigit() or int(val) < 1:
            raise InputError(f"--search {text}: {key}={val} is invalid: use an integer >= 1")
        if key in params:
            raise InputError(f"--search {text}: {key} is given twice: give each parameter once")
        params[key] = int(val)
    if params.get("nbits", 8) > 16:
        raise InputError(f"--search {text}: nbits={params['nbits']} is invalid: use 1 to 16 bits per PQ code")
    if params.get("M", 2) < 2:
        raise InputError(f"--search {text}: M={params['M']} is invalid: use an integer >= 2 (32 is typical)")
    if dim is not None and "m" in params and dim % params["m"]:
        near = sorted(divisors(dim), key=lambda m: abs(m - params["m"]))[:3]
        raise InputError(f"--search {text}: m={params['m']} does not divide the projection dim {dim}: use one of {', '.join(map(str, sorted(near)))}")
    return SearchSpec(kind, tuple(sorted(params.items())))


@dataclass(frozen=True)
class DeviceConfig:
    """Where a model runs: ``device`` (auto, cpu, cuda, cuda:N or mps; None reads $CURATOR_DEVICE,
    else auto), the compute ``dtype`` and the attention implementation. Not part of any artefact's
    identity except through the dtype; ``curator.model.device.resolve`` checks it against the machine."""

    device: str | None = None
    dtype: str = "auto"
    attn_implementation: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise InputError(f"--attn-implementation {self.attn_implementation!r} is unknown: use one of {', '.join(ATTN_IMPLEMENTATIONS)}")


@dataclass(frozen=True)
class IndexConfig:
    """Everything that defines the vectors in a gradient store."""

    model: str = "smollm2-135m"
    lora: LoraSettings = field(default_factory=LoraSettings)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    batch_size: int = 32
    search: str | None = None  # search index type (SearchSpec, built by curator.store.search); None keeps the store's, flat for a new one
    device: DeviceConfig = field(default_factory=DeviceConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch_size={self.batch_size} is invalid: use an integer >= 1 (--batch-size)")
        if self.search is not None:
            parse_search(self.search, dim=self.projection.dim)


# Progress callback: (stage, done, total). Library code reports through it and never prints.
ProgressFn = Callable[[str, int, int], None]


def is_int(v: Any) -> bool:
    """An int option value (a bool is not one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An int or float option value that is not a bool or NaN."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def no_progress(stage: str, done: int, total: int) -> None:
    """The default progress callback: does nothing."""
