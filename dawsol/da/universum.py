"""Universum regularization L_u, the official form: the mean of the universum pixel features."""

from __future__ import annotations

from torch import Tensor

from dawsol.distributed import global_denominator


def universum_loss(features: Tensor, universum: Tensor) -> Tensor:
    """Mean over every universum pixel of the batch and every channel; 0 for an empty universum.

    ``features [B, D, N]`` (post-ReLU, so this is their L1 norm over D), ``universum [B, N]`` bool.
    """
    mask = universum.to(features.dtype)
    total = (features.sum(1) * mask).sum()
    return total / global_denominator(mask.sum() * features.shape[1])
