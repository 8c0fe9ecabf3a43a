"""What a grid costs: images x epochs per cell and the device-hours a measured throughput implies.

``estimate(params, source)`` counts, per cell, the training images (train split x epochs) and
the evaluation images (a val pass every ``eval_every`` epochs and after the last, then the final
val + test pass of ``dawsol evaluate``); an imported cell (params.yaml ``imports``) has only the
final val + test pass. Split sizes come from the prepared metadata when the
dataset is prepared, else from the official split sizes (``KNOWN_SPLIT_SIZES``).

The throughput is measured, not assumed: ``benchmark`` runs a few real training steps (the
cell's model, WSOL augmentation and DA loss, through training's own ``train_step``) and a
few forward passes in evaluation mode on random input, once per distinct model configuration,
under training's determinism settings (restored afterwards; the benchmark does draw from the
global RNGs).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dawsol.config import Settings, grid_cells, grid_imports, resolve
from dawsol.errors import DawsolError
from dawsol.layout import SPLITS, split_file
from dawsol.runtime import deterministic, synchronize
from dawsol.training.optim import validation_due
from dawsol.training.parts import build_parts
from dawsol.training.step import train_step

# Official split sizes (wsolevaluation metadata; docs/datasets.md, docs/protocol.md section 1.1).
KNOWN_SPLIT_SIZES: dict[str, dict[str, int]] = {
    "cub": {"train": 5994, "val": 1000, "test": 5794},
    "ilsvrc": {"train": 1281167, "val": 10000, "test": 50000},
    "openimages": {"train": 29819, "val": 2500, "test": 5000},
}


@dataclass(frozen=True)
class Throughput:
    """Images per second of one model configuration on one device."""

    train_images_per_s: float
    eval_images_per_s: float


@dataclass(frozen=True)
class CellEstimate:
    """One cell's workload and its expected time on the benchmarked device."""

    cell: str
    train_images: int  # train split size x epochs
    eval_images: int  # every validation pass plus the final val + test evaluation
    split_sizes: dict[str, int]
    sizes_from: str  # "metadata" (prepared data) or "known" (official split sizes)
    throughput: Throughput
    device_hours: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_sizes(settings: Settings) -> tuple[dict[str, int], str]:
    """The cell's split sizes and where they came from: prepared metadata, else the official sizes."""
    files = [split_file(settings.dataset_dir, split) for split in SPLITS]
    if all(path.is_file() for path in files):
        counts = [sum(1 for line in path.read_text().splitlines() if line.strip()) for path in files]
        return dict(zip(SPLITS, counts, strict=True)), "metadata"
    dataset = settings.cell.dataset
    if dataset not in KNOWN_SPLIT_SIZES:
        raise DawsolError(
            f"{settings.dataset_dir}: not prepared and {dataset!r} has no known split sizes; "
            f"run: dawsol prepare {dataset}"
        )
    return dict(KNOWN_SPLIT_SIZES[dataset]), "known"


def workload(settings: Settings, sizes: Mapping[str, int], imported: bool = False) -> tuple[int, int]:
    """(train images, eval images) of one cell: train x epochs; val passes during training + val + test.

    An ``imported`` cell is not trained: only ``dawsol evaluate``'s val + test pass.
    """
    if imported:
        return 0, sizes["val"] + sizes["test"]
    train = settings.train
    val_passes = sum(1 for epoch in range(1, train.epochs + 1) if validation_due(train, epoch))
    train_images = sizes["train"] * train.epochs
    eval_images = sizes["val"] * val_passes + sizes["val"] + sizes["test"]
    return train_images, eval_images


def benchmark_key(settings: Settings) -> tuple[Any, ...]:
    """What decides a cell's throughput: model, WSOL method, DA loss, sizes and batch."""
    da = settings.da
    return (
        settings.model.backbone,
        settings.model.large_feature_map,
        settings.model.width,
        settings.model.frozen_stages,
        settings.wsol.method,
        repr(sorted(settings.wsol.options.items())),  # e.g. ACoL's head width
        None if da is None else (da.loss, da.use_tsa, da.use_ld, da.use_lu, da.sample_num_source),
        settings.data.image_size,
        settings.data.num_classes,
        settings.train.batch_size,
        settings.train.bf16,
        settings.train.channels_last,
    )


class RandomImages(torch.utils.data.Dataset):
    """``length`` random normalised images with random labels (seeded): input for the benchmark."""

    def __init__(self, length: int, image_size: int, num_classes: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(length, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, num_classes, (length,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


def benchmark(settings: Settings, device: torch.device, steps: int = 3, warmup: int = 1) -> Throughput:
    """Images/s of ``steps`` timed training steps (after ``warmup``) with the DA terms active, and of
    as many forward passes in evaluation mode, on random input; pretrained weights are not loaded."""
    settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, pretrained="none"))
    batch = settings.train.batch_size
    data = RandomImages(batch, settings.data.image_size, settings.data.num_classes)
    with deterministic(device):
        parts = build_parts(settings, device, dataset=data)
        model = parts.model
        images, labels = data.images, data.labels
        epoch = settings.da.first_epoch if settings.da is not None else 0
        model.train()
        for _ in range(warmup):
            train_step(parts, images, labels, epoch, 0)
        synchronize(device)
        started = time.perf_counter()
        for iteration in range(steps):
            train_step(parts, images, labels, epoch, iteration)
        synchronize(device)
        train_seconds = time.perf_counter() - started

        model.eval()
        with torch.no_grad():
            device_images = images.to(device)
            for _ in range(warmup):
                model(device_images)
            synchronize(device)
            started = time.perf_counter()
            for _ in range(steps):
                out = model(device_images)
                model.wsol_cams(out, labels.to(device))
            synchronize(device)
            eval_seconds = time.perf_counter() - started
    return Throughput(batch * steps / train_seconds, batch * steps / eval_seconds)


def estimate(
    params: Mapping[str, Any],
    source: str | Path,
    device: torch.device,
    steps: int = 3,
    cells: Sequence[str] | None = None,
    on_benchmark: Any = None,
) -> list[CellEstimate]:
    """Per-cell estimates for the grid (or the named ``cells``); one benchmark per distinct configuration.

    ``on_benchmark(settings, throughput)`` is called after each benchmark (progress reporting).
    """
    names = cells if cells is not None else [cell.name for cell in grid_cells(params, source)]
    imported = grid_imports(params, source)
    measured: dict[tuple[Any, ...], Throughput] = {}
    results = []
    for name in names:
        settings = resolve(name, params, source)
        key = benchmark_key(settings)
        if key not in measured:
            measured[key] = benchmark(settings, device, steps)
            if on_benchmark is not None:
                on_benchmark(settings, measured[key])
        throughput = measured[key]
        sizes, origin = split_sizes(settings)
        train_images, eval_images = workload(settings, sizes, imported=settings.cell in imported)
        seconds = train_images / throughput.train_images_per_s + eval_images / throughput.eval_images_per_s
        results.append(CellEstimate(name, train_images, eval_images, sizes, origin, throughput, seconds / 3600))
    return results
