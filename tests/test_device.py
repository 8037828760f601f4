"""Device handling: --device/--dtype/CURATOR_DEVICE, stores as before on the CPU, gradient
checkpointing against the reference, the GPU's batched product, and out-of-memory back-off."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from curator.cli.main import cli
from curator.config import DeviceConfig, GradientConfig, IndexConfig, LoraSettings, ProjectionConfig
from curator.errors import CuratorRuntimeError, InputError
from curator.gradients import fastgrad
from curator.gradients.computer import GradientComputer
from curator.influence.indexing import compute_dtype, index_file
from curator.model import device as device_mod
from curator.model.device import Placement, resolve, resolve_device, resolve_dtype
from curator.model.models import load_model
from curator.store.store import GradientStore
from tests.test_fastgrad import ALL_LINEAR, PACKING, assert_matches, mixed_examples, randomise_lora_b

DEMO = Path(__file__).resolve().parents[1] / "curator" / "assets" / "demo" / "candidates.jsonl"
GOLDEN = Path(__file__).resolve().parent / "data" / "cpu_store_before_device.json"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


# ----------------------------------------------------------------------------- resolving


@NO_CUDA
def test_resolve_device_here(monkeypatch):
    monkeypatch.delenv("CURATOR_DEVICE", raising=False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setenv("CURATOR_DEVICE", "cpu")
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(InputError, match=r"^--device cuda: no CUDA device is available here .*: use --device cpu or auto$"):
        resolve_device("cuda")
    monkeypatch.setenv("CURATOR_DEVICE", "cuda:1")
    with pytest.raises(InputError, match=r"^CURATOR_DEVICE cuda:1: no CUDA device"):
        resolve_device(None)
    for bad in ("gpu", "cpu:0", "cuda:x", "mps:1"):
        with pytest.raises(InputError, match="is not a device: use auto, cpu, cuda, cuda:N or mps"):
            resolve_device(bad)


def test_auto_prefers_cuda_then_mps(monkeypatch):
    """auto's order, with the availability checks doubled (the real ones are tested above and on a GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


def test_resolve_dtype():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == "fp32"
    assert resolve_dtype("bf16", cpu) == "bf16"
    with pytest.raises(InputError, match="fp16 runs on a GPU only"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(InputError, match="--dtype 'fp64' is unknown"):
        DeviceConfig(dtype="fp64")
    with pytest.raises(InputError, match="--attn-implementation 'magic' is unknown"):
        DeviceConfig(attn_implementation="magic")
    # on the CPU the weights stay fp32 and bf16 runs under autocast; fp32 needs no context
    p = Placement(cpu, "bf16")
    assert p.weights_dtype == torch.float32
    with p.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with Placement(cpu, "fp32").autocast():
        assert not torch.is_autocast_enabled("cpu")
    # a GPU placement loads the weights in the compute dtype, with nothing to autocast
    gpu = Placement(torch.device("cuda", 0), "bf16")
    assert gpu.weights_dtype == torch.bfloat16
    assert compute_dtype("auto", gpu) == "bf16"
    with pytest.raises(InputError, match="gradient dtype fp32 on a model loaded in bf16"):
        compute_dtype("fp32", gpu)
    assert compute_dtype("bf16", Placement(cpu, "fp32")) == "bf16"


def test_load_model_places_it():
    loaded = load_model("tiny-random", DeviceConfig(device="cpu", dtype="bf16"))
    assert loaded.placement == Placement(torch.device("cpu"), "bf16", "auto")
    assert next(loaded.model.parameters()).dtype == torch.float32  # autocast on the CPU
    assert loaded.fingerprint == load_model("tiny-random", DeviceConfig(device="cpu")).fingerprint
    eager = load_model("tiny-random", DeviceConfig(device="cpu", attn_implementation="eager"))
    assert eager.model.config._attn_implementation == "eager"


# ----------------------------------------------------------------------------- the CLI


@NO_CUDA
@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--device", "cuda"], {}, "error: --device cuda: no CUDA device is available here"),
        ([], {"CURATOR_DEVICE": "cuda"}, "error: CURATOR_DEVICE cuda: no CUDA device is available here"),
        (["--device", "tpu"], {}, "error: --device 'tpu' is not a device"),
        (["--dtype", "fp16"], {}, "error: --dtype fp16 runs on a GPU only"),
    ],
)
def test_cli_refuses_a_device_it_does_not_have(tmp_path, args, env, message):
    out = tmp_path / "store"
    r = CliRunner().invoke(cli, ["-q", "index", str(DEMO), "--out", str(out), "--model", "tiny-random", "--dim", "32", *args], env=env)
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [r.output.strip().splitlines()[0]] and r.output.startswith(message), r.output
    assert not out.exists()  # refused before anything is written


def _index(tmp_path: Path, name: str, rows: Path, args: list[str], env: dict[str, str | None]) -> GradientStore:
    out = tmp_path / name
    r = CliRunner().invoke(cli, ["-q", "index", str(rows), "--out", str(out), "--model", "tiny-random", "--dim", "32", "--max-length", "128", *args], env=env)
    assert r.exit_code == 0, r.output
    assert "device: cpu, fp32" in r.output  # said once
    assert r.output.count("device:") == 1
    return GradientStore.open(out)


@NO_CUDA
def test_cpu_stores_are_the_same_as_before(tmp_path):
    """--device cpu, auto and CURATOR_DEVICE=cpu make the store that curator made before --device existed."""
    golden = json.loads(GOLDEN.read_text())
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:6]))
    stores = [
        _index(tmp_path, "explicit", rows, ["--device", "cpu"], {"CURATOR_DEVICE": None}),
        _index(tmp_path, "auto", rows, [], {"CURATOR_DEVICE": None}),
        _index(tmp_path, "env", rows, [], {"CURATOR_DEVICE": "cpu"}),
    ]
    for store in stores:
        assert list(store.ids()) == golden["ids"]
        np.testing.assert_allclose(store.vectors(), np.array(golden["vectors"], dtype=np.float32), atol=2e-6)
        assert store.manifest["gradient"]["dtype"] == "fp32"
        assert store.manifest["gradient"]["device"] == "cpu"
    np.testing.assert_array_equal(stores[0].vectors(), stores[1].vectors())
    np.testing.assert_array_equal(stores[0].vectors(), stores[2].vectors())


def test_device_is_recorded_not_enforced(tmp_path):
    """A store made on a GPU resumes on the CPU (and is compared with CPU stores): the device is only recorded."""
    config = IndexConfig(model="tiny-random", projection=ProjectionConfig(dim=32), gradient=GradientConfig(max_length=128), device=DeviceConfig(device="cpu"))
    rows = tmp_path / "rows.jsonl"
    lines = DEMO.read_text().splitlines(keepends=True)
    rows.write_text("".join(lines[:3]))
    out = tmp_path / "store"
    index_file(rows, out, config)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["gradient"]["device"] = "cuda"  # as if a GPU had made these rows
    (out / "manifest.json").write_text(json.dumps(manifest))
    rows.write_text("".join(lines[:5]))
    r = index_file(rows, out, config)
    assert (r.rows_added, r.rows_skipped) == (2, 3)
    assert json.loads((out / "manifest.json").read_text())["gradient"]["device"] == "cpu+cuda"


# ----------------------------------------------------------------------------- gradient checkpointing


@PACKING
def test_gradient_checkpointing_matches_reference(tiny, packing):
    """Every Linear has LoRA (so a layer's last hooked output comes last in its replay), and the
    layers really are replayed: each LoRA Linear runs twice per batch."""
    comp = GradientComputer(tiny.model, LoraSettings(target_modules=ALL_LINEAR))
    randomise_lora_b(comp)
    encs = mixed_examples(tiny.tokenizer)
    ref = comp.reference_gradients(encs)
    lora_a = next(m for n, m in comp.model.named_modules() if n.endswith("down_proj.lora_A.default"))
    calls = []
    handle = lora_a.register_forward_hook(lambda *_: calls.append(1))
    try:
        plain = fastgrad.per_example_gradients(comp.model, comp.params, encs, batch_size=6, packing=packing)
        n_plain = len(calls)
        ckpt = fastgrad.per_example_gradients(comp.model, comp.params, encs, batch_size=6, packing=packing, gradient_checkpointing=True)
    finally:
        handle.remove()
    assert (n_plain, len(calls) - n_plain) == (1, 2)
    assert_matches(comp, ckpt, ref)
    assert torch.allclose(ckpt, plain, rtol=1e-5, atol=1e-7)
    # the layers' own forward is back afterwards
    from curator.gradients.checkpointing import decoder_layers

    assert all("forward" not in vars(layer) for layer in decoder_layers(comp.model))


def test_gradient_checkpointing_in_warmup_and_refused_without_layers(tmp_path):
    """Warm-up with checkpointed layers trains the same adapter (to float rounding)."""
    from curator.gradients.checkpointing import checkpointed_layers
    from curator.gradients.warmup import WarmupConfig, warmup

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:8]))
    adapters = []
    for ckpt in (False, True):
        saved = warmup(rows, tmp_path / f"warm-{ckpt}", model="tiny-random", config=WarmupConfig(epochs=1, lr=1e-3, max_length=96, gradient_checkpointing=ckpt), device=DeviceConfig(device="cpu"))
        from safetensors.torch import load_file

        adapters.append(load_file(str(saved[0] / "adapter_model.safetensors")))
    assert adapters[0].keys() == adapters[1].keys()
    for k in adapters[0]:
        assert torch.allclose(adapters[0][k], adapters[1][k], rtol=1e-4, atol=1e-6), k

    with pytest.raises(InputError, match="--gradient-checkpointing: Linear has no checkpointable decoder layers"):
        with checkpointed_layers(torch.nn.Linear(2, 2)):
            pass


# ----------------------------------------------------------------------------- the GPU's batched product, on the CPU


def test_batched_product_equals_per_example_loop(tiny, monkeypatch):
    comp = GradientComputer(tiny.model, LoraSettings(target_modules=ALL_LINEAR))
    randomise_lora_b(comp)
    encs = mixed_examples(tiny.tokenizer)
    ref = comp.reference_gradients(encs)
    monkeypatch.setattr(fastgrad, "BATCHED_PRODUCT_DEVICES", frozenset({"cpu"}))
    assert_matches(comp, fastgrad.per_example_gradients(comp.model, comp.params, encs, batch_size=6), ref)


# ----------------------------------------------------------------------------- out-of-memory back-off


def _oom_over(limit: int, attempts: list[int]):
    real = fastgrad._batch

    def batch(model, hooks, examples, *args, **kwargs):
        size = sum(len(e.input_ids) for e in examples)
        attempts.append(size)
        if size > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {size} MiB")
        return real(model, hooks, examples, *args, **kwargs)

    return batch


def test_out_of_memory_halves_the_batch_and_loses_nothing(tiny, monkeypatch, caplog):
    """A device OOM is doubled here (it raises torch's own OutOfMemoryError above a token size):
    the batch is split, retried, every row comes back once, and it is said once."""
    comp = GradientComputer(tiny.model, LoraSettings())
    randomise_lora_b(comp)
    encs = mixed_examples(tiny.tokenizer) * 2
    ref = comp.reference_gradients(encs)
    attempts: list[int] = []
    monkeypatch.setattr(fastgrad, "_batch", _oom_over(250, attempts))
    backoff = fastgrad.Backoff()
    with caplog.at_level(logging.WARNING, logger="curator"):
        seen = [i for idx, _ in fastgrad.iter_per_example_gradients(comp.model, comp.params, encs, tokens_per_batch=600, backoff=backoff) for i in idx]
        first = len(attempts)
        got = fastgrad.per_example_gradients(comp.model, comp.params, encs, tokens_per_batch=600, backoff=backoff)
    assert sorted(seen) == list(range(len(encs)))  # none lost, none twice
    assert_matches(comp, got, ref)
    oom = [r for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(oom) == 1 and "halving it to" in oom[0].getMessage()
    assert backoff.cap is not None and backoff.cap <= 250
    assert any(a > 250 for a in attempts[:first])  # the first run did run out of memory
    assert all(a <= 250 for a in attempts[first:])  # the second kept under the cap: it never ran out again


def test_out_of_memory_on_one_example_is_one_line(tiny, monkeypatch):
    comp = GradientComputer(tiny.model, LoraSettings())
    encs = mixed_examples(tiny.tokenizer)
    monkeypatch.setattr(fastgrad, "_batch", _oom_over(10, []))
    with pytest.raises(CuratorRuntimeError, match=r"one example of \d+ tokens does not fit in cpu memory on its own: lower --max-length, or add --gradient-checkpointing"):
        fastgrad.per_example_gradients(comp.model, comp.params, encs)


def test_sampling_out_of_memory_halves_the_batch(tiny, monkeypatch, caplog):
    from curator.model import sampling

    prompts = {f"g{i}": f"Question number {i}: what is {i} + {i}?" for i in range(6)}
    config = sampling.SamplingConfig(k=2, max_new_tokens=6, batch_size=6)
    clean = sampling.sample_outputs(tiny, prompts, config)
    real = sampling.generate_batch
    sizes: list[int] = []

    def generate(model, prompt_ids, *args, **kwargs):
        sizes.append(len(prompt_ids))
        if len(prompt_ids) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return real(model, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(sampling, "generate_batch", generate)
    with caplog.at_level(logging.WARNING, logger="curator"):
        again = sampling.sample_outputs(tiny, prompts, config)
    assert again == clean  # samples do not depend on the batching
    assert sizes == [6, 3, 2, 1, 2, 1]
    assert len([r for r in caplog.records if "out of memory" in r.getMessage()]) == 1


def test_gpu_benchmark_runs_on_the_cpu():
    """benchmarks/gpu.py's smoke run: both paths run and a/b is printed (its figures need a GPU)."""
    import re
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    r = subprocess.run([sys.executable, str(script), "--device", "cpu", "--shapes", "tiny", "--dtypes", "fp32,bf16", "--rows", "4", "--batch", "2", "--dim", "32", "--repeat", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("tiny")]
    assert [row[1] for row in rows] == ["fp32", "bf16"]
    assert all(re.fullmatch(r"\d+\.\d\d", row[-1]) and float(row[-1]) > 0 for row in rows), r.stdout
