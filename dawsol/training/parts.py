"""The built parts of a training run: model (and its DDP wrapper), DA loss, objective, optimizer, data.

``build_parts`` builds them in a fixed order (dataset, model, DA loss, augmentation, optimizer),
so that a seeded process initialises the same weights every time; it does not seed: the caller
(``dawsol.training.cell``) seeds where it runs a cell, and ``dawsol estimate`` not at all.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from dawsol import distributed
from dawsol.config import Settings
from dawsol.da import DALoss
from dawsol.data.datasets import TrainDataset
from dawsol.errors import DawsolError
from dawsol.models import WSOLModel, build_model
from dawsol.models.registry import normalization
from dawsol.training.objective import Objective
from dawsol.training.optim import build_optimizer
from dawsol.training.sampling import TrainBatches
from dawsol.wsol import InputAugmentation, input_augmentation

log = logging.getLogger(__name__)


def build_components(
    settings: Settings, device: torch.device
) -> tuple[WSOLModel, DALoss | None, InputAugmentation | None]:
    """The cell's model, its DA loss (None for ``da: none``) and its input augmentation (None for CAM, ADL)."""
    model = build_model(settings.model, settings.data.num_classes, settings.wsol).to(device)
    da_loss = None
    if settings.da is not None:
        da_loss = DALoss(settings.da, settings.data.num_classes, model.feature_dim).to(device)
    return model, da_loss, input_augmentation(settings.wsol)


def train_dataset(settings: Settings) -> TrainDataset:
    """The cell's prepared train split, transformed and normalised as its backbone expects."""
    return TrainDataset(
        settings.dataset_dir,
        split="train",
        image_size=settings.data.image_size,
        resize_size=settings.data.resize_size,
        normalization=normalization(settings.model.backbone),
    )


@dataclass
class TrainingParts:
    """Everything a training run steps with; ``model`` is the bare model (the one checkpoints hold)."""

    settings: Settings
    device: torch.device
    dataset: torch.utils.data.Dataset
    model: WSOLModel
    da_loss: DALoss | None
    objective: Objective
    optimizer: torch.optim.Optimizer
    batches: TrainBatches
    augment_generator: torch.Generator
    iterations_per_epoch: int
    channels_last: bool

    @property
    def generators(self) -> dict[str, torch.Generator]:
        """The run's own generators, saved and restored with the checkpoint."""
        return {"loader": self.batches.generator, "augment": self.augment_generator}


def build_parts(
    settings: Settings, device: torch.device, dataset: torch.utils.data.Dataset | None = None
) -> TrainingParts:
    """The parts of training ``settings.cell`` on ``device``; ``dataset`` (default: the cell's prepared
    train split) yields ``(image, label)``. Under torchrun the model is wrapped in DDP (SyncBatchNorm on CUDA)."""
    train = settings.train
    bf16 = train.bf16 and device.type == "cuda"
    channels_last = train.channels_last and device.type == "cuda"
    if (train.bf16 or train.channels_last) and device.type != "cuda":
        log.info("bf16 / channels_last apply on CUDA only; training in float32 on %s", device.type)
    if dataset is None:
        dataset = train_dataset(settings)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DawsolError(
            f"{settings.dataset_dir}: the train split is empty; run: dawsol prepare {settings.cell.dataset}"
        )
    model, da_loss, augmentation = build_components(settings, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: nn.Module = model
    if distributed.current().enabled:
        if device.type == "cuda":  # batch statistics over the global batch, as one process has them
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [device.index] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    iterations = math.ceil(len(dataset) / train.batch_size)  # type: ignore[arg-type]
    return TrainingParts(
        settings=settings,
        device=device,
        dataset=dataset,
        model=model,
        da_loss=da_loss,
        objective=Objective(settings, model, forward, da_loss, augmentation, iterations * train.epochs, bf16),
        optimizer=build_optimizer(model, da_loss, settings),
        batches=TrainBatches(
            dataset, train.batch_size, settings.seed, settings.data.num_workers, pin=device.type == "cuda"
        ),
        augment_generator=torch.Generator(),
        iterations_per_epoch=iterations,
        channels_last=channels_last,
    )
