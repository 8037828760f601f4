"""GPU throughput of `curator index` against a plain batched forward + backward on the same GPU.

    python benchmarks/gpu.py                       # CUDA: smollm2-135m, llama-1b, llama-8b shapes; bf16 and fp32
    python benchmarks/gpu.py --shapes llama-1b --dtypes bf16 --rows 256
    python benchmarks/gpu.py --device cpu --shapes tiny --rows 8    # a smoke run anywhere

Throughput does not depend on the weights, so each model is a real architecture with random
weights built from its config in code (nothing to download, nothing to carry):

- ``smollm2-135m``: SmolLM2-135M's shape (30 layers, hidden 576, GQA 9/3, vocabulary 49,152);
- ``llama-1b``: Llama 3.2 1B's (16 layers, hidden 2,048, GQA 32/8, vocabulary 128,256);
- ``llama-8b``: Llama 3.1 8B's (32 layers, hidden 4,096, GQA 32/8, vocabulary 128,256).

Rows are random token ids of 128 to 512 tokens, half prompt and half response. For each shape
and dtype it prints:

- (a) ``curator index``'s model side: ``Featurizer.vectors`` per committed batch, i.e. per-example
  LoRA gradients (packed, hooks), the sparse JL projection on the device and the [n, dim]
  vectors back on the CPU;
- (b) a plain batched forward + backward of the same rows with the same LoRA adapter: padded,
  length-bucketed batches under the same token budget, the mean loss, one ``backward`` into
  the summed ``.grad``, as one training step costs;

as tokens/s, peak GPU memory, and a/b (target: >= 0.8). Both run in the same process on the same
GPU, after a warm-up batch each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curator.config import DeviceConfig, GradientConfig, IndexConfig, LoraSettings, ProjectionConfig  # noqa: E402
from curator.gradients.fastgrad import buckets, pad_batch  # noqa: E402
from curator.influence.indexing import Featurizer  # noqa: E402
from curator.model.device import resolve  # noqa: E402
from curator.model.encoding import IGNORE_INDEX, Encoded  # noqa: E402
from curator.model.models import LoadedModel  # noqa: E402

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=100000.0),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True, rope_theta=500000.0),
    "llama-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False, rope_theta=500000.0),
}


def random_model(shape: str, placement) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(placement.device):
        model = LlamaForCausalLM._from_config(config, dtype=placement.weights_dtype)
    return model.eval()


def random_rows(n: int, vocab: int, seed: int = 0) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(128, 513, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        half = length // 2
        rows.append(Encoded(input_ids=ids, labels=[IGNORE_INDEX] * half + ids[half:], n_prompt=half, n_response=length - half, truncated=False))
    return rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_and_reset(device: torch.device) -> float:
    if device.type != "cuda":
        return float("nan")
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def run_index(feat: Featurizer, rows: list[Encoded], batch: int) -> None:
    for lo in range(0, len(rows), batch):
        feat.vectors(rows[lo : lo + batch])


def run_plain(model, params, rows: list[Encoded], tokens_per_batch: int, device: torch.device, autocast) -> None:
    for idx in buckets(rows, tokens_per_batch=tokens_per_batch):
        ids, mask, targets = pad_batch([rows[i] for i in idx], 0)
        ids, mask, targets = ids.to(device), mask.to(device), targets.to(device)
        with autocast():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        loss.backward()
        for p in params:
            p.grad = None


def timed(fn, device: torch.device, tokens: int, repeat: int) -> tuple[float, float]:
    """(tokens/s, peak GiB) of ``fn``, the best of ``repeat`` runs."""
    best = float("inf")
    peak_and_reset(device)
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return tokens / best, peak_and_reset(device)


def bench(shape: str, dtype: str, args: argparse.Namespace) -> dict[str, float]:
    placement = resolve(DeviceConfig(device=args.device, dtype=dtype))
    model = random_model(shape, placement)
    loaded = LoadedModel(shape, model, None, f"random-{shape}", placement)
    config = IndexConfig(model=shape, lora=LoraSettings(), projection=ProjectionConfig(dim=args.dim), gradient=GradientConfig(max_length=4096, tokens_per_batch=args.tokens_per_batch), batch_size=args.batch, device=DeviceConfig(device=args.device, dtype=dtype))
    feat = Featurizer(config, loaded)
    rows = random_rows(args.rows, SHAPES[shape]["vocab_size"])
    tokens = sum(len(r.input_ids) for r in rows)
    warm = rows[: max(2, args.batch // 4)]
    run_index(feat, warm, args.batch)
    a, a_peak = timed(lambda: run_index(feat, rows, args.batch), placement.device, tokens, args.repeat)
    params = [p for _, p in feat.computer.params]
    peft_model = feat.computer.model
    run_plain(peft_model, params, warm, args.tokens_per_batch, placement.device, placement.autocast)
    b, b_peak = timed(lambda: run_plain(peft_model, params, rows, args.tokens_per_batch, placement.device, placement.autocast), placement.device, tokens, args.repeat)
    del feat, model, peft_model
    if placement.device.type == "cuda":
        torch.cuda.empty_cache()
    return {"a": a, "a_peak": a_peak, "b": b, "b_peak": b_peak, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", default="smollm2-135m,llama-1b,llama-8b")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32, help="rows per committed batch (curator index --batch-size)")
    ap.add_argument("--tokens-per-batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    placement = resolve(DeviceConfig(device=args.device))
    name = torch.cuda.get_device_name(placement.device) if placement.device.type == "cuda" else str(placement.device)
    print(f"device={name} torch={torch.__version__} rows={args.rows} tokens_per_batch={args.tokens_per_batch} dim={args.dim}")
    print(f"{'shape':14} {'dtype':5} {'(a) index tok/s':>16} {'peak GiB':>9} {'(b) fwd+bwd tok/s':>18} {'peak GiB':>9} {'a/b':>6}")
    for shape in args.shapes.split(","):
        for dtype in args.dtypes.split(","):
            try:
                r = bench(shape, dtype, args)
            except torch.OutOfMemoryError as exc:
                print(f"{shape:14} {dtype:5} out of memory ({str(exc).splitlines()[0][:80]})")
                torch.cuda.empty_cache()
                continue
            print(f"{shape:14} {dtype:5} {r['a']:16,.0f} {r['a_peak']:9.2f} {r['b']:18,.0f} {r['b_peak']:9.2f} {r['a'] / r['b']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
