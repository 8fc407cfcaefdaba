"""The model's tensor reductions: masked means over positions and the LM cross-entropy at target
rows. Kept apart from the model class so each can be tested and read against its formula alone."""

from __future__ import annotations

import torch


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of h (B, T, C) over positions where mask (B, T) is true; zeros where none is."""
    m = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class _TargetCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logit rows z (n, V) at targets y (n,): F.cross_entropy's value,
    with a backward that writes (softmax - one-hot) / n in one pass over z. F.cross_entropy
    keeps a log-softmax copy of z and zero-fills another (n, V) tensor for the NLL gradient:
    at V ~ 50k that is a large share of a CPU step."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(z, dim=-1)  # (n,)
        ctx.save_for_backward(z, y, lse)
        return (lse - z.gather(1, y[:, None])[:, 0]).mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        z, y, lse = ctx.saved_tensors
        scale = grad_out / max(len(y), 1)
        grad = torch.sub(z, lse[:, None]).exp_().mul_(scale)  # (n, V): softmax * scale
        grad[torch.arange(len(y), device=y.device), y] -= scale
        return grad, None


def target_cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of rows z (n, V) at targets y (n,), every row a target (no ignore_index)."""
    return _TargetCrossEntropy.apply(z, y)
