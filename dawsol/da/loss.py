"""The DA-WSOL terms of ``L = L_c + lambda1 L_d + lambda2 L_u``: assigner, sampling, L_d and L_u.

The training loop decides when the terms are active (0-based epoch ``> da.start_epoch``), weighs
them with ``lambda1`` and ``lambda2`` and, under CutMix, calls ``DALoss`` once per label set and
mixes the terms by the area ratio, as the official code does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from dawsol.components import known, load
from dawsol.components.da_losses import DA_LOSSES
from dawsol.config import DASettings
from dawsol.da.tsa import FAKE_TARGET, TRUE_TARGET, UNIVERSUM, TargetSampleAssigner
from dawsol.da.universum import universum_loss
from dawsol.distributed import global_rows
from dawsol.errors import DawsolError


class DAOutput(NamedTuple):
    """The DA terms of one batch and the assigner's sets."""

    loss_d: Tensor  # scalar
    loss_u: Tensor  # scalar
    assignment: Tensor  # [B, h, w] int8: 0 universum, 1 fake target, 2 true target
    num_qualified: int  # images that contributed to L_d


class SampledSets(NamedTuple):
    """Per image: the source set ``[z, fake-target samples]`` and the true-target samples."""

    source: Tensor  # [B, n_s, D]
    target: Tensor  # [B, n_t, D]


def _random_members(members: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """Indices ``[B, count]`` of ``count`` distinct random members per row (a uniform random subset).

    Rows with fewer members are padded with non-members; the caller masks them out.
    """
    device = generator.device if generator is not None else members.device
    # the whole (multi-process) batch's keys are drawn and this rank's rows kept, so a rank
    # samples exactly what one process on the whole batch would (dawsol.distributed)
    total, offset = global_rows(members.shape[0])
    keys = torch.rand((total, members.shape[1]), generator=generator, device=device)
    keys = keys[offset : offset + members.shape[0]].to(members.device)
    return torch.where(members, keys, -1.0).topk(count, dim=1, sorted=False).indices


def qualifies(assignment: Tensor, num_source: int, num_target: int) -> Tensor:
    """``[B]`` bool: the image has at least ``num_source - 1`` fake-target and ``num_target`` true-target pixels."""
    fake = (assignment == FAKE_TARGET).sum(1)
    true = (assignment == TRUE_TARGET).sum(1)
    return (fake >= num_source - 1) & (true >= num_target)


def sample_sets(
    features: Tensor,
    pooled: Tensor,
    assignment: Tensor,
    num_source: int,
    num_target: int,
    generator: torch.Generator | None = None,
) -> SampledSets:
    """The official 32/32 sampling, batched: ``S_b = {z_b} + (n_s - 1) fake-target pixels``, ``T_b = n_t
    true-target pixels``, without replacement. Images that do not ``qualify`` get padding rows.

    ``features [B, D, N]`` (the model's layout) and ``pooled [B, D]`` keep their gradient;
    sampling uses ``generator`` (or the global torch RNG). Both sets come from one gather in the
    features' own layout, so the backward is one scatter into a gradient of that layout (two
    gathers from a transposed view cost two full-size zero fills and a strided add on the CPU).
    """
    dim, num_pixels = features.shape[1:]
    if num_source - 1 > num_pixels or num_target > num_pixels:
        raise DawsolError(
            f"da.sample_num_source ({num_source}) / da.sample_num_target ({num_target}) exceed the "
            f"{num_pixels} pixels of the feature map; lower them in params.yaml or use a larger input or feature map"
        )
    fake, true = assignment == FAKE_TARGET, assignment == TRUE_TARGET
    fake_index = _random_members(fake, num_source - 1, generator)
    true_index = _random_members(true, num_target, generator)
    index = torch.cat([fake_index, true_index], dim=1)  # [B, n_s - 1 + n_t]
    samples = features.gather(2, index[:, None, :].expand(-1, dim, -1)).transpose(1, 2)  # [B, n, D]
    fake_samples, target = samples.split([num_source - 1, num_target], dim=1)
    source = torch.cat([pooled[:, None, :], fake_samples], dim=1)
    return SampledSets(source, target)


class DALoss(nn.Module):
    """L_d (the record of ``da.loss``, ``dawsol.components.da_losses``) and L_u from the Target Sample Assigner, for
    the settings of one DA method.

    The state dict holds the assigner's anchors and counts and, for DANN, the discriminator.
    Ablations: ``use_tsa: false`` skips the assigner (every pixel is a true-target sample, the
    source set is z repeated, the universum is empty); ``use_ld`` / ``use_lu`` switch a term off
    (it is then 0).
    """

    def __init__(self, da: DASettings, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        record = known("DA loss", da.loss, DA_LOSSES)
        self.term = load(record.term)
        if record.pairs_samples and da.use_ld and da.sample_num_source != da.sample_num_target:
            raise DawsolError(
                f"da.{da.method}: the linear-time MMD pairs source and target samples, so "
                f"sample_num_source ({da.sample_num_source}) must equal sample_num_target ({da.sample_num_target})"
            )
        self.settings = da
        self.assigner = TargetSampleAssigner(num_classes, feature_dim, da.kmeans_max_iter, da.anchor_update)
        self.discriminator = None if record.discriminator is None else load(record.discriminator)(feature_dim)

    def param_groups(self, lr: float) -> list[dict]:
        """The discriminator's group at rate ``lr`` (the caller passes ``lr * lr_classifier_ratio``),
        never decayed; empty for MMD."""
        if self.discriminator is None:
            return []
        return [{"name": "discriminator", "params": list(self.discriminator.parameters()), "lr": lr, "decay": False}]

    def forward(
        self,
        features: Tensor,
        pooled: Tensor,
        labels: Tensor,
        progress: float,
        generator: torch.Generator | None = None,
    ) -> DAOutput:
        """The DA terms for pixel features ``[B, D, h, w]``, image features ``[B, D]`` and ``labels [B]``.

        ``progress`` in [0, 1] drives the DANN reversal schedule; sampling uses ``generator`` (or
        the global torch RNG). The anchors are updated in training mode only. Gradients flow
        through ``pooled`` and the sampled pixel features (and, for L_u, the universum pixels);
        the k-means itself is detached.
        """
        da = self.settings
        batch, _, height, width = features.shape
        flat = features.flatten(2)  # [B, D, N]
        pixels = flat.transpose(1, 2)  # [B, N, D]
        if da.use_tsa:
            assignment = self.assigner(pixels, pooled, labels, update=self.training)
            source_count = da.sample_num_source
        else:
            assignment = torch.full(pixels.shape[:2], TRUE_TARGET, dtype=torch.int64, device=features.device)
            source_count = 1
        zero = features.new_zeros(())
        loss_d = zero
        qualified = qualifies(assignment, source_count, da.sample_num_target)
        if da.use_ld:
            sets = sample_sets(flat, pooled, assignment, source_count, da.sample_num_target, generator)
            source = sets.source if da.use_tsa else sets.source.expand(-1, da.sample_num_source, -1)
            loss_d = self.term(self.discriminator, source, sets.target, qualified, progress, da.grl_schedule)
        loss_u = universum_loss(flat, assignment == UNIVERSUM) if da.use_lu else zero
        return DAOutput(
            loss_d=loss_d,
            loss_u=loss_u,
            assignment=assignment.to(torch.int8).view(batch, height, width),
            num_qualified=int(qualified.sum().item()),
        )
