"""Per-example LoRA gradients against independent references."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from curator.config import LoraSettings
from curator.model.encoding import IGNORE_INDEX, encode
from curator.gradients.computer import GradientComputer, adam_precondition, lora_parameters


def hand_reference(peft_model, enc) -> torch.Tensor:
    """Response-only mean NLL written out by hand (log-softmax + gather), then backward."""
    peft_model.zero_grad(set_to_none=True)
    ids = torch.tensor([enc.input_ids])
    logp = torch.log_softmax(peft_model(input_ids=ids).logits[0].double(), dim=-1)
    positions = [t for t in range(len(enc.labels)) if enc.labels[t] != IGNORE_INDEX and t > 0]
    nll = torch.stack([-logp[t - 1, enc.labels[t]] for t in positions]).mean()
    nll.backward()
    grads = [p.grad.reshape(-1).clone() for _, p in lora_parameters(peft_model)]
    peft_model.zero_grad(set_to_none=True)
    return torch.cat(grads).float()


def examples(tok, max_length: int = 128):
    pairs = [
        ("What is 2 + 2?", "The answer is 4."),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}], "Blue."),
        ("Explain gravity in one sentence, please, for a child of five years old.", "Heavy things pull other things towards them."),
    ]
    return [encode(tok, p, r, max_length) for p, r in pairs]


def _warm_lora(comp: GradientComputer) -> None:
    """Give lora_B non-zero values so lora_A gradients are non-trivial too."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in comp.params:
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_default_lora_targets_and_size(tiny):
    comp = GradientComputer(tiny.model, LoraSettings())
    names = [n for n, _ in comp.params]
    assert all(any(m in n for m in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in names)
    assert len(names) == 2 * 4 * 2  # 2 layers × q/k/v/o × (A, B)
    assert comp.n_params == 2 * 4 * (8 * 64 + 64 * 8)


def test_lora_init_is_seeded(tiny):
    from curator.model.models import load_model

    a = GradientComputer(tiny.model, LoraSettings(seed=3))
    b = GradientComputer(load_model("tiny-random").model, LoraSettings(seed=3))
    c = GradientComputer(load_model("tiny-random").model, LoraSettings(seed=4))
    pa, pb, pc = (torch.cat([p.reshape(-1) for _, p in x.params]) for x in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_per_example_gradients_match_hand_reference(tiny):
    comp = GradientComputer(tiny.model, LoraSettings())
    _warm_lora(comp)
    encs = examples(tiny.tokenizer)
    got = comp.gradients(encs, "sgd")
    assert got.shape == (len(encs), comp.n_params)
    for i, enc in enumerate(encs):
        ref = hand_reference(comp.model, enc)
        assert torch.allclose(got[i], ref, rtol=1e-4, atol=1e-6), i
        assert float(ref.abs().sum()) > 0
    # distinct examples give distinct gradients
    assert not torch.allclose(got[0], got[1])


def test_gradient_matches_finite_difference(tiny):
    """Autograd-free check: the directional derivative along the gradient equals its norm."""
    comp = GradientComputer(tiny.model, LoraSettings())
    _warm_lora(comp)
    comp.model.double()
    enc = examples(tiny.tokenizer)[0]
    grad = comp.reference_gradients([enc])[0].double()
    u = grad / grad.norm()
    eps = 1e-3

    def shift(sign: float) -> None:
        off = 0
        for _, p in comp.params:
            k = p.numel()
            p.add_((sign * eps * u[off : off + k]).view_as(p))
            off += k

    with torch.no_grad():
        shift(1.0)
        up = _loss(comp, enc)
        shift(-2.0)
        down = _loss(comp, enc)
        shift(1.0)
    fd = (up - down) / (2 * eps)
    assert abs(fd - grad.norm().item()) < 1e-3 * grad.norm().item()


def _loss(comp, enc) -> float:
    ids = torch.tensor([enc.input_ids])
    logits = comp.model(input_ids=ids).logits[0, :-1]
    return float(F.cross_entropy(logits, torch.tensor(enc.labels[1:]), ignore_index=IGNORE_INDEX))


def test_prompt_tokens_do_not_enter_the_loss_mask(tiny):
    tok = tiny.tokenizer
    short = encode(tok, "Hi?", "The answer is 4.", 256)
    long = encode(tok, "A much longer and different prompt, with many more tokens in it?", "The answer is 4.", 256)
    for e in (short, long):
        assert e.labels[: e.n_prompt] == [IGNORE_INDEX] * e.n_prompt
        assert e.labels[e.n_prompt :] == e.input_ids[e.n_prompt :]
    # the scored tokens are exactly the response's, whatever the prompt
    assert short.labels[short.n_prompt :] == long.labels[long.n_prompt :]
    assert short.n_response == long.n_response
    # changing a prompt token moves no label
    ids = list(long.input_ids)
    ids[2] = (ids[2] + 1) % 250
    assert [l for l in long.labels if l != IGNORE_INDEX] == [i for i, l in zip(ids, long.labels) if l != IGNORE_INDEX]


def test_chat_template_is_applied(tiny):
    enc = encode(tiny.tokenizer, "Hello", "World", 256)
    text = tiny.tokenizer.decode(enc.input_ids)
    assert text.startswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    assert tiny.tokenizer.decode(enc.input_ids[enc.n_prompt :]) == "World<|im_end|>\n"


def test_adam_preconditioning_matches_formula():
    g = torch.tensor([[0.5, -1.0, 0.0, 2.0]])
    m = torch.tensor([0.1, 0.2, -0.3, 0.0])
    v = torch.tensor([0.01, 0.04, 0.09, 0.0])
    b1, b2, eps = 0.9, 0.999, 1e-8
    out = adam_precondition(g, m, v, (b1, b2), eps)
    for j in range(4):
        m1 = b1 * m[j].item() + (1 - b1) * g[0, j].item()
        v1 = b2 * v[j].item() + (1 - b2) * g[0, j].item() ** 2
        assert abs(out[0, j].item() - m1 / (v1**0.5 + eps)) < 1e-5


def test_adam_kind_uses_checkpoint_moments(tmp_path, small_data):
    from safetensors.torch import load_file

    from curator.model.models import load_model
    from curator.gradients.warmup import WarmupConfig, warmup

    cands, _ = small_data
    ckpts = warmup(cands, tmp_path / "wu", model="tiny-random", config=WarmupConfig(epochs=2, lr=1e-3, batch_size=2, max_length=128))
    assert [c.name for c in ckpts] == ["checkpoint-1", "checkpoint-2"]
    loaded = load_model("tiny-random")
    comp = GradientComputer(loaded.model, LoraSettings(), checkpoint=ckpts[1])
    # the checkpoint's LoRA weights were loaded: lora_B is no longer zero
    assert any(float(p.detach().abs().sum()) > 0 for n, p in comp.params if "lora_B" in n)
    enc = examples(loaded.tokenizer)[:2]
    sgd = comp.gradients(enc, "sgd")
    adam = comp.gradients(enc, "adam")
    opt = load_file(str(ckpts[1] / "optimizer.safetensors"))
    m = torch.cat([opt[f"exp_avg/{n}"].reshape(-1) for n, _ in comp.params])
    v = torch.cat([opt[f"exp_avg_sq/{n}"].reshape(-1) for n, _ in comp.params])
    expected = (0.9 * m + 0.1 * sgd) / (torch.sqrt(0.999 * v + 0.001 * sgd**2) + 1e-8)
    assert torch.allclose(adam, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(adam, sgd)
