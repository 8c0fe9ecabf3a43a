"""The optimizer and the schedules of training: the official SGD over lr groups, the step decay, when to validate.

SGD with Nesterov momentum and weight decay over the model's official learning-rate groups
(docs/method.md section 3.3) and the DANN discriminator's; x0.1 at the start of every 1-based
epoch ``e`` with ``e % lr_decay_frequency == 0`` (the discriminator is never decayed).
"""

from __future__ import annotations

import torch
from torch import nn

from dawsol.config import Settings, TrainSettings


def lr_factor(epoch: int, decay_frequency: int) -> float:
    """The step schedule at 1-based ``epoch``: x0.1 at the start of every epoch divisible by the frequency."""
    return 0.1 ** (epoch // decay_frequency) if decay_frequency > 0 else 1.0


def validation_due(train: TrainSettings, epoch: int) -> bool:
    """Whether training validates on ``val`` after 1-based ``epoch``: every ``eval_every`` epochs and after the last."""
    return epoch % train.eval_every == 0 or epoch == train.epochs


def build_optimizer(model: nn.Module, da_loss: nn.Module | None, settings: Settings) -> torch.optim.SGD:
    """SGD (Nesterov, momentum, weight decay) over the model's and the DA loss's official lr groups.

    Every group keeps its undecayed rate as ``base_lr``; ``decay`` is False for the DANN
    discriminator, whose rate the schedule never changes.
    """
    train = settings.train
    groups = [{"decay": True, **group} for group in model.param_groups(train)]
    if da_loss is not None:
        groups += [{**group, "decay": False} for group in da_loss.param_groups(train.lr * train.lr_classifier_ratio)]
    groups = [group for group in groups if list(group["params"])]
    for group in groups:
        group["base_lr"] = group["lr"]
    return torch.optim.SGD(
        groups,
        lr=train.lr,
        momentum=train.momentum,
        nesterov=train.nesterov,
        weight_decay=train.weight_decay,
    )


def apply_schedule(optimizer: torch.optim.Optimizer, epoch: int, decay_frequency: int) -> float:
    """Set every decayed group's rate for 1-based ``epoch``; return the scale factor."""
    factor = lr_factor(epoch, decay_frequency)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor if group["decay"] else group["base_lr"]
    return factor
