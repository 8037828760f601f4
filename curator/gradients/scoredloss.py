"""The weighted response-token loss at the scored positions, with its gradient formed in one pass.

``scored_nll(h, W, t, w)`` is Σ_i w_i · NLL(softmax(h_i Wᵀ), t_i) over the scored rows h_i of the
final hidden states. Autograd's cross-entropy keeps the logits, the log-probabilities and then
their gradient: three [rows × vocabulary] tensors (78 MB each for 400 SmolLM2 rows), each written
and read again. Here one logits buffer is turned in place into the weighted gradient
w_i · (softmax − one-hot), and multiplied by W straight away, in the forward: the backward only
scales that saved [rows × hidden] gradient. This is what fused linear-cross-entropy kernels do
(Liger's, Cut Cross-Entropy), without their chunking, which made the matrix products slower on CPU.
On 400 SmolLM2 rows, forward plus backward took 309 ms against 377 ms.

Only for a plain frozen ``Linear`` vocabulary projection in fp32 (``fusable``); the result and
the gradient equal the cross-entropy path's to float32 rounding (tests/test_fastgrad.py).
"""

from __future__ import annotations

from typing import Any

import torch


class _ScoredNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = hidden @ weight.t()  # [rows, vocab]
            rows = torch.arange(len(targets), device=targets.device)
            z_target = z[rows, targets]
            top = z.amax(dim=1)
            z.sub_(top[:, None]).exp_()
            total = z.sum(dim=1)
            loss = ((total.log() + top - z_target) * row_weight).sum()
            z.div_(total[:, None])  # softmax
            z[rows, targets] -= 1.0
            z.mul_(row_weight[:, None])
            ctx.save_for_backward(z @ weight)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad, None, None, None


def fusable(lm_head: Any) -> bool:
    """True for a plain ``Linear`` with a frozen weight and no bias (the tied or untied vocabulary projection)."""
    return type(lm_head) is torch.nn.Linear and lm_head.bias is None and not lm_head.weight.requires_grad


def scored_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
    """Σ_i row_weight_i · NLL of target_i under softmax(hidden_i weightᵀ); differentiable w.r.t. ``hidden`` only."""
    return _ScoredNLL.apply(hidden.float(), weight.float(), targets, row_weight.float())
