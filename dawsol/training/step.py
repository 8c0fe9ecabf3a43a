"""One optimisation step: the objective's losses, backward, the discriminator's all-reduce, SGD.

Used by the training loop, by ``dawsol estimate``'s benchmark and by the multi-process tests,
so all three step exactly as training does.
"""

from __future__ import annotations

import math

import torch

from dawsol import distributed
from dawsol.errors import DawsolError
from dawsol.layout import run_dir
from dawsol.training.parts import TrainingParts

LOSS_NAMES = ("loss", "loss_c", "loss_d", "loss_u")


def train_step(
    parts: TrainingParts, images: torch.Tensor, labels: torch.Tensor, epoch: int, iteration: int
) -> tuple[int, dict[str, float]]:
    """One step on a batch at 0-based ``epoch`` and global ``iteration``; returns the number of correct
    predictions and the loss terms (under torchrun: the global batch's)."""
    dist = distributed.current()
    images = images.to(parts.device, non_blocking=True)
    labels = labels.to(parts.device, non_blocking=True)
    if parts.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    losses = parts.objective(images, labels, epoch, iteration, parts.augment_generator)
    parts.optimizer.zero_grad(set_to_none=True)
    losses.loss.backward()
    if dist.enabled and parts.da_loss is not None:  # the DANN discriminator is outside DDP
        for param in parts.da_loss.parameters():
            if param.grad is not None:
                param.grad = distributed.all_reduce_sum(param.grad) / dist.world_size
    parts.optimizer.step()
    terms = torch.stack([losses.loss, losses.loss_c, losses.loss_d, losses.loss_u]).detach()
    if dist.enabled:  # the ranks' shares add up to the global batch's values
        terms = distributed.all_reduce_sum(terms) / dist.world_size
    values = dict(zip(LOSS_NAMES, terms.tolist(), strict=True))
    if not math.isfinite(values["loss"]):
        cell = parts.settings.cell
        raise DawsolError(
            f"cell {cell.name}: the loss became {values['loss']} at epoch {epoch + 1}, "
            f"iteration {iteration}; lower train.lr in params.yaml and delete {run_dir(cell)}"
        )
    correct = int(distributed.all_reduce_sum((losses.logits.argmax(1) == labels).sum()).item())
    return correct, values
