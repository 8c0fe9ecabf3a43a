"""The training data order: per-epoch batches and per-image transform seeds that depend on (seed, epoch) alone.

The order of an epoch and each image's crop and flip are pure functions of the cell's seed and
the epoch, so a resumed run sees exactly the batches an uninterrupted one does, and W processes
under torchrun see exactly one process's data (each rank takes its contiguous slice of every
global batch).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

from dawsol import distributed
from dawsol.runtime import epoch_seed

log = logging.getLogger(__name__)


class SeededSamples(torch.utils.data.Dataset):
    """Items ``dataset[index]`` fetched by key ``(index, seed)``, the random transforms drawn from
    ``seed`` alone: an image's crop and flip do not depend on which process, worker or batch
    position loads it."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class EpochBatches:
    """The batch sampler of the training loader: the global batches of epoch ``epoch`` from
    ``start_batch`` on (order and per-image seeds are pure functions of (seed, epoch)); under
    torchrun each rank yields its contiguous slice of every global batch. Set ``epoch`` and
    ``start_batch`` before iterating (the loader, and its persistent workers, stay the same)."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch = self.start_batch = 0

    def _global_batches(self) -> list[list[tuple[int, int]]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)))
        base = epoch_seed(self.seed, self.epoch, stream=3)
        keys = [(index, (base + index) % 2**63) for index in order.tolist()]
        start = self.start_batch * self.batch_size
        return [keys[i : i + self.batch_size] for i in range(start, len(keys), self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        ctx = distributed.current()
        for batch in self._global_batches():
            if len(batch) < ctx.world_size:  # a last batch too small to give every rank an image
                log.warning("skipping the last %d image(s) of epoch %d: fewer than the ranks", len(batch), self.epoch)
                continue
            yield distributed.shard(batch, ctx)

    def __len__(self) -> int:
        return len(self._global_batches())


class TrainBatches:
    """The training loader over a dataset of ``(image, label)``: one DataLoader for the whole run (its
    workers persist across epochs), re-aimed at an epoch and a first batch by ``epoch()``."""

    def __init__(
        self, dataset: torch.utils.data.Dataset, batch_size: int, seed: int, num_workers: int, pin: bool
    ) -> None:
        self.seed = seed
        self.sampler = EpochBatches(len(dataset), batch_size, seed)  # type: ignore[arg-type]
        self.generator = torch.Generator()
        self.loader = torch.utils.data.DataLoader(
            SeededSamples(dataset),
            batch_sampler=self.sampler,
            num_workers=num_workers,
            generator=self.generator,
            pin_memory=pin,
            persistent_workers=num_workers > 0,
        )

    def epoch(self, epoch: int, start_batch: int) -> torch.utils.data.DataLoader:
        """The batches of 0-based ``epoch`` from ``start_batch`` on."""
        self.sampler.epoch, self.sampler.start_batch = epoch, start_batch
        self.generator.manual_seed(epoch_seed(self.seed, epoch, stream=1))
        return self.loader
