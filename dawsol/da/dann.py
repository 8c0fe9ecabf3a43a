"""DANN for L_d: a linear domain classifier behind a gradient reversal layer.

The reversal coefficient follows ``2 / (1 + exp(-gamma p)) - 1`` over training progress p in
[0, 1]: gamma = 1 in the official code (``grl_schedule: official``, rising to about 0.46) and
gamma = 10 in the DANN paper (``grl_schedule: paper``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dawsol.components.da_losses import register_da_loss
from dawsol.distributed import global_denominator

GRL_GAMMA = {"official": 1.0, "paper": 10.0}  # the official code's gamma, and the DANN paper's


def grl_coefficient(progress: float, schedule: str = "official") -> float:
    """The reversal coefficient at training progress ``progress`` (0 at the start, 1 at the end)."""
    gamma = GRL_GAMMA[schedule]
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coefficient: float) -> Tensor:  # type: ignore[override]
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.coefficient * grad, None


def reverse_gradient(x: Tensor, coefficient: float) -> Tensor:
    """Identity forward; multiplies the gradient by ``-coefficient`` backward."""
    return _GradientReversal.apply(x, coefficient)


class DomainDiscriminator(nn.Module):
    """The official domain classifier: one linear layer D -> 1 (xavier, bias 0) and a sigmoid."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, 1)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, source: Tensor, target: Tensor, weights: Tensor, coefficient: float) -> Tensor:
        """``1/2 [BCE(D(R(S)), 1) + BCE(D(R(T)), 0)]`` over the samples of the images with weight 1.

        ``source [B, n_s, D]``, ``target [B, n_t, D]``, ``weights [B]`` (1 for a qualifying image,
        else 0). With no qualifying image the loss is 0.
        """
        logits_s = self.linear(reverse_gradient(source, coefficient)).squeeze(-1)  # [B, n_s]
        logits_t = self.linear(reverse_gradient(target, coefficient)).squeeze(-1)
        loss_s = F.binary_cross_entropy_with_logits(logits_s, torch.ones_like(logits_s), reduction="none")
        loss_t = F.binary_cross_entropy_with_logits(logits_t, torch.zeros_like(logits_t), reduction="none")
        count = global_denominator(weights.sum())
        mean_s = (loss_s.mean(1) * weights).sum() / count
        mean_t = (loss_t.mean(1) * weights).sum() / count
        return 0.5 * (mean_s + mean_t)


@register_da_loss("dann", "DA-WSOL-DANN", discriminator="DomainDiscriminator")
def dann_term(
    discriminator: nn.Module | None, source: Tensor, target: Tensor, qualified: Tensor, progress: float, schedule: str
) -> Tensor:
    """L_d as DANN (``dawsol.components.da_losses``): the domain discriminator's loss behind the gradient reversal,
    qualified images weighted 1."""
    if discriminator is None:
        raise ValueError("dann_term needs the DANN discriminator")
    return discriminator(source, target, qualified.to(source.dtype), grl_coefficient(progress, schedule))
