"""Linear-time multi-kernel MMD (DAN's ``mmd_rbf_accelerate``, as the official DA-WSOL uses it).

For source and target sets of n vectors each, with indices mod n,
``MMD^2 = 1/n sum_i [k(s_i, s_i+1) + k(t_i, t_i+1) - k(s_i, t_i+1) - k(s_i+1, t_i)]`` and
``k(a, c) = sum_{j=0..4} exp(-||a - c||^2 / (sigma * 2^(j-2)))``, where sigma is the mean
pairwise squared distance over the 2n pooled vectors, computed without gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dawsol.components.da_losses import register_da_loss
from dawsol.distributed import global_denominator

KERNEL_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
# a floor for the bandwidth, so identical vectors give k = 5 rather than 0/0
_MIN_SIGMA = 1e-12


def batched_linear_mk_mmd(source: Tensor, target: Tensor) -> Tensor:
    """The estimator for each of B pairs of sets: ``source, target [B, n, D] -> [B]``."""
    if source.shape != target.shape or source.ndim != 3:
        raise ValueError(f"MMD needs source and target of equal shape [B, n, D], got {source.shape}, {target.shape}")
    with torch.no_grad():
        pooled = torch.cat([source, target], dim=1).detach()
        m = pooled.shape[1]
        # sum_{i,j} ||x_i - x_j||^2 = 2 m sum_i ||x_i - mean||^2 (the centred form is numerically stable)
        spread = (pooled - pooled.mean(1, keepdim=True)).square().sum((1, 2))
        sigma = (2.0 * m * spread / (m * m - m)).clamp_min(_MIN_SIGMA)
        bandwidths = sigma[:, None] * sigma.new_tensor(KERNEL_SCALES)  # [B, 5]
    source_next, target_next = source.roll(-1, dims=1), target.roll(-1, dims=1)

    def kernel(a: Tensor, c: Tensor) -> Tensor:
        distance = (a - c).square().sum(-1)  # [B, n]
        return torch.exp(-distance[..., None] / bandwidths[:, None, :]).sum(-1)

    terms = kernel(source, source_next) + kernel(target, target_next)
    terms = terms - kernel(source, target_next) - kernel(source_next, target)
    return terms.mean(1)


def linear_mk_mmd(source: Tensor, target: Tensor) -> Tensor:
    """The estimator for one pair of sets: ``source, target [n, D] -> scalar``."""
    return batched_linear_mk_mmd(source[None], target[None])[0]


@register_da_loss("mmd", "DA-WSOL-MMD", pairs_samples=True)
def mmd_term(
    _discriminator: nn.Module | None, source: Tensor, target: Tensor, qualified: Tensor, progress: float, schedule: str
) -> Tensor:
    """L_d as MMD (``dawsol.components.da_losses``): the linear-time MK-MMD per image, averaged over the qualified
    images of the (global) batch."""
    per_image = batched_linear_mk_mmd(source, target)
    count = global_denominator(qualified.sum().to(per_image.dtype))
    return torch.where(qualified, per_image, 0.0).sum() / count
