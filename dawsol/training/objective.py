"""The training objective of one batch: ``L = L_c + lambda1 L_d + lambda2 L_u`` (docs/method.md section 1.2).

``Objective`` runs the WSOL input augmentation, the forward pass and the losses, with no
optimizer and no loop, so one batch's losses can be checked on their own. ``L_c`` is the
WSOL method's loss: the cross-entropy (under CutMix mixed over both label sets by the area
ratio), plus a method head's own terms (ACoL's CE of head B, SPG's three BCE terms,
docs/wsol-methods.md), scaled under torchrun to this rank's share of the global batch mean.
The DA terms are active after ``da.start_epoch`` (0-based epochs ``> start_epoch``), with DANN progress ``p = global
iteration / total iterations``; under CutMix the DA loss runs once per label set and the terms
are mixed by the same ratio, as the official code does.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dawsol import distributed
from dawsol.config import Settings
from dawsol.models import WSOLModel
from dawsol.wsol import InputAugmentation, MixedBatch


class BatchLosses(NamedTuple):
    """The terms of one batch (0-dim tensors; ``loss_d`` and ``loss_u`` 0 before the start epoch) and its logits."""

    loss: Tensor
    loss_c: Tensor
    loss_d: Tensor
    loss_u: Tensor
    logits: Tensor


class Objective:
    """The losses of one training batch for a cell's model, input augmentation and DA loss."""

    def __init__(
        self,
        settings: Settings,
        model: WSOLModel,
        forward: nn.Module,
        da_loss: nn.Module | None,
        augmentation: InputAugmentation | None,
        total_iterations: int,
        bf16: bool = False,
    ) -> None:
        """``forward`` is the model as it is called in training (``model``, or its DDP wrapper)."""
        self.settings = settings
        self.model = model
        self.forward = forward
        self.da_loss = da_loss
        self.augmentation = augmentation
        self.total_iterations = total_iterations
        self.bf16 = bf16

    def __call__(
        self, images: Tensor, labels: Tensor, epoch: int, iteration: int, generator: torch.Generator
    ) -> BatchLosses:
        """The losses of ``images`` and ``labels`` (on the model's device) at 0-based ``epoch`` and global
        ``iteration``; the augmentation draws from ``generator``."""
        if self.augmentation is None:
            batch = MixedBatch(images, labels, None, 1.0)
        else:
            batch = self.augmentation.apply(images, labels, generator)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with autocast:
            out = self.forward(batch.images, batch.labels_a)
        logits = out.logits.float()
        loss_c = F.cross_entropy(logits, batch.labels_a)
        if batch.labels_b is not None:
            loss_c = batch.weight_a * loss_c + (1 - batch.weight_a) * F.cross_entropy(logits, batch.labels_b)
        method_loss = self.model.method_loss(out, batch.labels_a, tuple(batch.images.shape[2:]))
        if method_loss is not None:
            loss_c = loss_c + method_loss
        # under torchrun: this rank's share of the global mean (DDP averages the gradients); 1 alone
        loss_c = loss_c * (len(labels) / distributed.global_denominator(loss_c.new_tensor(float(len(labels)))))
        zero = logits.new_zeros(())
        loss_d, loss_u = zero, zero
        da = self.settings.da
        if self.da_loss is not None and da is not None and da.active(epoch):
            progress = iteration / self.total_iterations
            features, pooled = out.features.float(), out.pooled.float()
            result = self.da_loss(features, pooled, batch.labels_a, progress)
            loss_d, loss_u = result.loss_d, result.loss_u
            if batch.labels_b is not None:
                other = self.da_loss(features, pooled, batch.labels_b, progress)
                loss_d = batch.weight_a * loss_d + (1 - batch.weight_a) * other.loss_d
                loss_u = batch.weight_a * loss_u + (1 - batch.weight_a) * other.loss_u
        loss = loss_c
        if da is not None:
            loss = loss + da.lambda1 * loss_d + da.lambda2 * loss_u
        return BatchLosses(loss, loss_c, loss_d, loss_u, logits)
