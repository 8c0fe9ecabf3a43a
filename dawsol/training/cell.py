"""``train_cell``: train one cell as the official DA-WSOL code does, resuming from its checkpoint.

It wires the parts: seeds the process, builds the model, DA loss, objective, optimizer and data
(``parts``), restores a checkpoint (``dawsol.checkpoints.format``), and runs the epoch loop (``loop``)
with validation on ``val`` (``dawsol.evaluation.scoring``) and the console, ``train_log.jsonl`` and
MLflow sinks. On CPU a resumed run ends with exactly the metrics of an uninterrupted one: the
data order and the augmentations' generator are pure functions of (seed, epoch), and every
other RNG state is saved with the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import torch
import yaml

from dawsol import distributed
from dawsol.checkpoints.format import restore_training, resumable_checkpoint, save_checkpoint, training_state
from dawsol.config import Cell, Settings
from dawsol.errors import DawsolError
from dawsol.evaluation.figures import draw_assignments
from dawsol.evaluation.scoring import check_split, score_split
from dawsol.layout import checkpoint_path, require_prepared, resume_path, run_dir, train_log_path
from dawsol.runtime import Interrupted, restore_rng, rng_state, seed_everything, select_device
from dawsol.tracking import CellRun
from dawsol.training.loop import EpochLoop, Position, Sink
from dawsol.training.optim import validation_due
from dawsol.training.parts import TrainingParts, build_parts
from dawsol.training.sinks import ConsoleSink, MLflowSink, TrainLogSink

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """What ``train_cell`` did: the epochs now done and whether it trained anything."""

    epochs_done: int
    trained: bool
    records: list[dict[str, Any]]


def train_cell(
    settings: Settings, device_name: str | None = None, tracking: bool = True, progress: bool | None = None
) -> TrainOutcome:
    """Train one cell to its last epoch, resuming from its checkpoint; a finished cell is left as is.

    ``device_name`` overrides ``train.device``; ``progress`` (default: stderr is a terminal)
    shows a tqdm bar per epoch instead of log lines only. Raises ``Interrupted`` after saving a
    checkpoint on SIGTERM/SIGINT, and DawsolError on bad input. Under ``torchrun`` (WORLD_SIZE > 1)
    the ranks train the cell together with DistributedDataParallel (``dawsol.distributed``);
    rank 0 writes the checkpoint, the log and the MLflow run.
    """
    if warning := settings.da_never_active():
        log.warning(warning)
    require_prepared(settings)
    for split in ("train", "val"):  # caught now, not at the first batch or the first validation
        check_split(settings, split)
    ctx, device = distributed.init(select_device(device_name or settings.train.device))
    # one process: it holds the lock; under torchrun the launcher (`dawsol train`) holds it for its ranks
    with trainer_lock(settings.cell) if ctx.world_size == 1 else contextlib.nullcontext():
        return _train_locked(settings, ctx, device, tracking, progress)


def position_checkpoint(parts: TrainingParts, position: Position, run_id: str | None) -> dict[str, Any]:
    """The checkpoint of ``parts`` at ``position``: weights, optimizer and DA state, the RNGs, the records so far."""
    return training_state(
        parts.settings,
        parts.model,
        parts.optimizer,
        parts.da_loss,
        epoch=position.epoch,
        batch=position.batch,
        stats=position.stats.to_dict(),
        rng=rng_state(parts.generators),
        records=position.records,
        run_id=run_id,
    )


@contextlib.contextmanager
def trainer_lock(cell: Cell) -> Iterator[None]:
    """Hold ``runs/<cell>/.train.lock`` while training: one trainer per cell.

    The lock is the operating system's (``filelock``): a killed trainer releases it with its
    process. A second ``dawsol train`` of the cell (a rerun after the workflow manager lost track
    of the first, ``--unlock`` while it runs) fails at once, naming the holder from
    ``.train.owner``, instead of training the cell twice into the same files.
    """
    folder = run_dir(cell)
    folder.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(folder / ".train.lock")
    owner = folder / ".train.owner"
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        try:
            holder = json.loads(owner.read_text())
            who = f"process {holder['pid']} on {holder['host']} since {holder['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process"
        raise DawsolError(
            f"{cell}: {who} is training this cell (lock {folder / '.train.lock'}); wait for it or stop it first"
        ) from None
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _train_locked(
    settings: Settings, ctx: distributed.Dist, device: torch.device, tracking: bool, progress: bool | None
) -> TrainOutcome:
    cell = settings.cell
    # a save killed mid-write (SIGKILL, power loss) leaves its temporary file; under the lock none is in use
    for leftover in run_dir(cell).glob(f".{checkpoint_path(cell).name}.*.tmp"):
        leftover.unlink(missing_ok=True)
    found = resumable_checkpoint(settings)
    state = None
    if found is None:
        train_log_path(cell).unlink(missing_ok=True)
    else:
        state, path = found
        if state["epoch"] >= settings.train.epochs:
            log.info("%s: already trained (%d epochs in %s); nothing to do", cell.name, state["epoch"], path)
            return TrainOutcome(state["epoch"], False, list(state["records"]))
        log.info("%s: resuming from %s (epoch %d, batch %d)", cell.name, path, state["epoch"] + 1, state["batch"])
    seed_everything(settings.seed, device)
    parts = build_parts(settings, device)
    position = Position()
    run_id = None
    if state is not None:
        restore_training(state, parts.model, parts.optimizer, parts.da_loss)
        restore_rng(state["rng"], parts.generators)
        position = Position.from_checkpoint(state)
        run_id = state["mlflow_run_id"]
    tracker = CellRun.start(settings, run_id) if tracking and ctx.is_main else None
    if tracker is not None:
        run_id = tracker.run_id
        tracker.log_dataset(settings, "train", "training")
        tracker.log_dataset(settings, "val", "validation")

    def save(position: Position) -> None:
        if ctx.is_main:
            save_checkpoint(
                checkpoint_path(cell), position_checkpoint(parts, position, run_id), resume=resume_path(cell)
            )

    def validate(epoch: int, stop: threading.Event) -> dict[str, Any] | None:
        if not validation_due(settings.train, epoch):
            return None
        return score_split(parts.model, settings, "val", device, stop=stop).metrics

    sinks: list[Sink] = []
    if ctx.is_main:
        sinks += [TrainLogSink(train_log_path(cell)), ConsoleSink(cell.name, settings.train.epochs)]
        if tracker is not None:
            sinks.append(MLflowSink(tracker))
    loop = EpochLoop(parts, position, validate, save, sinks, sys.stderr.isatty() if progress is None else progress)
    log.info(
        "%s: training on %s x %d process(es), %d images, %d iterations per epoch",
        cell.name,
        device,
        ctx.world_size,
        len(parts.dataset),  # type: ignore[arg-type]
        parts.iterations_per_epoch,
    )
    monitor = (
        tracker.system_metrics(settings.tracking.system_metrics_interval)
        if tracker is not None
        else contextlib.nullcontext()
    )
    try:
        with monitor:
            loop.run()
            if tracker is not None:
                _log_training_artifacts(tracker, parts)
    except Interrupted:
        if tracker is not None:
            tracker.finish("KILLED")
        raise
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    if tracker is not None:
        tracker.finish()
    return TrainOutcome(position.epoch, True, position.records)


def _log_training_artifacts(tracker: CellRun, parts: TrainingParts) -> None:
    """The resolved settings, the training log, the checkpoint if ``tracking.log_checkpoint``, and (DA
    cells) the assigner's three sets on a few images."""
    settings = parts.settings
    tracker.log_artifact(train_log_path(settings.cell))
    if settings.tracking.log_checkpoint:  # params.yaml tracking.log_checkpoint: the run's MLflow model
        cell = settings.cell
        tracker.log_model(checkpoint_path(cell), "-".join(cell.name.split("/")), settings.train.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        settings_file = Path(tmp) / "settings.yaml"
        settings_file.write_text(yaml.safe_dump(settings.to_dict(), sort_keys=False))
        tracker.log_artifact(settings_file)
        if parts.da_loss is not None:
            figure = Path(tmp) / "assigner.png"
            with distributed.rank_local():  # rank 0 alone draws it
                draw_assignments(parts.model, parts.da_loss, settings, parts.device, figure)
            tracker.log_artifact(figure)
