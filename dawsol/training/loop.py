"""The epoch loop: built parts in, each finished epoch's record out to the sinks; stops cleanly on a signal.

``EpochLoop`` is handed the parts (``dawsol.training.parts``), where training stands
(``Position``), a validation function, a checkpoint writer and the sinks; it trains the
remaining epochs. After every epoch it saves a checkpoint, then hands the epoch's record
(docs/architecture.md, ``train_log.jsonl``) to every sink. SIGTERM or SIGINT finish the
current batch, save a mid-epoch checkpoint and raise ``Interrupted``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from dawsol import distributed
from dawsol.runtime import Interrupted, epoch_seed, stop_on_signals
from dawsol.training.optim import apply_schedule, lr_factor
from dawsol.training.parts import TrainingParts
from dawsol.training.step import LOSS_NAMES, train_step

log = logging.getLogger(__name__)

Record = dict[str, Any]
Sink = Callable[[Record, Sequence[Record]], None]  # (the epoch's record, every record so far)


@dataclass
class EpochStats:
    """Running sums of one epoch, saved in mid-epoch checkpoints so a resumed epoch logs the same."""

    images: int = 0
    batches: int = 0
    correct: int = 0
    loss: float = 0.0
    loss_c: float = 0.0
    loss_d: float = 0.0
    loss_u: float = 0.0
    seconds: float = 0.0

    def add(self, size: int, correct: int, losses: dict[str, float]) -> None:
        self.images += size
        self.batches += 1
        self.correct += correct
        for key in LOSS_NAMES:
            setattr(self, key, getattr(self, key) + losses[key] * size)

    def mean(self, key: str) -> float:
        return getattr(self, key) / max(self.images, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, tree: dict[str, Any]) -> EpochStats:
        return cls(**tree)


@dataclass
class Position:
    """Where a training run stands: finished epochs, batches done in the next one, its running sums, the records."""

    epoch: int = 0
    batch: int = 0
    stats: EpochStats = field(default_factory=EpochStats)
    records: list[Record] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Position:
        return cls(state["epoch"], state["batch"], EpochStats.from_dict(state["stats"]), list(state["records"]))


class EpochLoop:
    """Trains the remaining epochs of ``parts`` from ``position``.

    ``validate(epoch, stop)`` returns the val metrics after 1-based ``epoch`` (or None when no
    validation is due); ``save(position)`` writes the checkpoint; each sink gets every finished
    epoch's record after its checkpoint is written.
    """

    def __init__(
        self,
        parts: TrainingParts,
        position: Position,
        validate: Callable[[int, threading.Event], dict[str, Any] | None],
        save: Callable[[Position], None],
        sinks: Sequence[Sink] = (),
        progress: bool = False,
    ) -> None:
        self.parts = parts
        self.position = position
        self.validate = validate
        self.save = save
        self.sinks = list(sinks)
        self.progress = progress

    def run(self) -> None:
        """Train to the last epoch; raises ``Interrupted`` after saving a mid-epoch checkpoint on a signal."""
        settings = self.parts.settings
        position = self.position
        with stop_on_signals() as stop:
            while position.epoch < settings.train.epochs:
                epoch = position.epoch
                try:
                    if position.batch < self.parts.iterations_per_epoch and not self._train_epoch(epoch, stop):
                        raise Interrupted
                    record = self._record(epoch, stop)
                except Interrupted:
                    self.save(position)
                    raise Interrupted(
                        f"cell {settings.cell.name}: stopped by a signal in epoch {epoch + 1} after "
                        f"{position.batch} batches; checkpoint saved, re-run the same command to resume"
                    ) from None
                position.records.append(record)
                position.epoch, position.batch, position.stats = epoch + 1, 0, EpochStats()
                self.save(position)
                for sink in self.sinks:
                    sink(record, position.records)

    def _train_epoch(self, epoch: int, stop: threading.Event) -> bool:
        """Train the rest of 0-based ``epoch``; False if a signal stopped it."""
        parts, position = self.parts, self.position
        settings = parts.settings
        parts.model.train()
        if parts.da_loss is not None:
            parts.da_loss.train()
        apply_schedule(parts.optimizer, epoch + 1, settings.train.lr_decay_frequency)
        if position.batch == 0:
            parts.augment_generator.manual_seed(epoch_seed(settings.seed, epoch, stream=2))
        batches = parts.batches.epoch(epoch, position.batch)
        total = parts.iterations_per_epoch
        bar = None
        if self.progress:
            bar = tqdm(
                total=total,
                initial=position.batch,
                desc=f"epoch {epoch + 1}/{settings.train.epochs}",
                unit="batch",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        log_every = max(1, total // 10)
        started = time.perf_counter()
        for images, labels in batches:
            iteration = epoch * total + position.batch
            correct, losses = train_step(parts, images, labels, epoch, iteration)
            position.stats.add(sum(distributed.all_gather_sizes(len(labels))), correct, losses)
            position.batch += 1
            rate = position.stats.images / max(position.stats.seconds + time.perf_counter() - started, 1e-9)
            if bar is not None:
                bar.set_postfix(
                    img_s=f"{rate:.0f}",
                    loss=f"{losses['loss']:.3f}",
                    L_d=f"{losses['loss_d']:.3f}",
                    L_u=f"{losses['loss_u']:.3f}",
                )
                bar.update(1)
            elif position.batch % log_every == 0 and position.batch < total:
                log.info(
                    "epoch %d batch %d/%d: loss %.4f (L_d %.4f L_u %.4f) %.0f img/s",
                    epoch + 1,
                    position.batch,
                    total,
                    losses["loss"],
                    losses["loss_d"],
                    losses["loss_u"],
                    rate,
                )
            if distributed.any_rank(stop.is_set()):  # a signal on any rank stops every rank at this batch
                stop.set()
                break
        position.stats.seconds += time.perf_counter() - started
        if bar is not None:
            bar.close()
        return not stop.is_set()

    def _record(self, epoch: int, stop: threading.Event) -> Record:
        """Validate if due and build the record of 0-based ``epoch``."""
        train = self.parts.settings.train
        number = epoch + 1
        stats = self.position.stats
        val = self.validate(number, stop)
        return {
            "epoch": number,
            "lr": train.lr * lr_factor(number, train.lr_decay_frequency),
            "loss": stats.mean("loss"),
            "loss_c": stats.mean("loss_c"),
            "loss_d": stats.mean("loss_d"),
            "loss_u": stats.mean("loss_u"),
            "train_acc": 100.0 * stats.correct / max(stats.images, 1),
            "images_per_s": stats.images / max(stats.seconds, 1e-9),
            "val": val,
        }
