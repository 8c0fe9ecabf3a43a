"""Training of one cell: the loop, checkpoints, resume, determinism and device selection.

``train_cell(settings)`` trains the cell ``settings.cell`` as the official DA-WSOL code does
(method.md section 3): SGD with Nesterov momentum over the official learning-rate groups,
x0.1 at the start of every 1-based epoch ``e`` with ``e % lr_decay_frequency == 0`` (the DANN
discriminator is never decayed), the WSOL input augmentation, and after ``da.start_epoch``
(0-based epochs ``> start_epoch``) ``L = L_c + lambda1 L_d + lambda2 L_u`` with DANN progress
``p = global iteration / total iterations``. It validates on ``val`` every ``eval_every``
epochs and after the last.

Outputs (docs/architecture.md, "Cell outputs"): ``runs/<cell>/checkpoint.pt`` written atomically
after every epoch, and ``runs/<cell>/train_log.jsonl``, rewritten from the checkpoint's records so
the two never disagree. Re-running continues from the checkpoint; the data order and the
augmentations' generator are pure functions of (seed, epoch) and every other RNG state is saved,
so on CPU a resumed run ends with exactly the metrics of an uninterrupted one. SIGTERM or
SIGINT finish the current batch, save a mid-epoch checkpoint and raise ``Interrupted``.
Checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dawsol import distributed
from dawsol.atomic import atomic_path, atomic_write_text
from dawsol.config import Settings
from dawsol.errors import DawsolError
from dawsol.pipeline import train_outputs
from dawsol.wsol import MixedBatch

if TYPE_CHECKING:
    from dawsol.tracking import CellRun

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; re-run to resume."""


# --------------------------------------------------------------------------- paths, devices, seeds


def run_dir(settings: Settings) -> Path:
    """``runs/<cell>``: the cell's checkpoint and training log."""
    return checkpoint_path(settings).parent


def checkpoint_path(settings: Settings) -> Path:
    """``runs/<cell>/checkpoint.pt``."""
    return train_outputs(settings.cell)["checkpoint"]


def resume_path(settings: Settings) -> Path:
    """``runs/<cell>/.resume.pt``: a second name (hard link) of the last checkpoint.

    Snakemake and DVC delete a job's declared outputs before they re-run it, checkpoint.pt
    included; this undeclared name survives, so a re-run of an interrupted (e.g. preempted) job
    resumes instead of starting over.
    """
    return checkpoint_path(settings).with_name(".resume.pt")


def link_resume_state(checkpoint: Path, resume: Path) -> None:
    """Point ``resume`` at ``checkpoint``'s content atomically (a hard link, or a copy where links fail)."""
    with atomic_path(resume) as tmp:
        tmp.unlink()
        try:
            os.link(checkpoint, tmp)
        except OSError:
            shutil.copyfile(checkpoint, tmp)


def train_log_path(settings: Settings) -> Path:
    """``runs/<cell>/train_log.jsonl``."""
    return train_outputs(settings.cell)["train_log"]


def select_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps_ok}
    if name not in available:
        raise DawsolError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    if not available[name]:
        raise DawsolError(f"device {name!r} is not available on this machine: use --device auto or cpu")
    return torch.device(name)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed python, numpy and torch; deterministic algorithms on CPU, fast cuDNN kernels on CUDA."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        # Deterministic mode also NaN-fills every new tensor (a fifth of a CPU step); our results never read
        # uninitialised memory, so the fill buys nothing.
        torch.utils.deterministic.fill_uninitialized_memory = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed that is a pure function of (seed, 0-based epoch, stream)."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def lr_factor(epoch: int, decay_frequency: int) -> float:
    """The step schedule at 1-based ``epoch``: x0.1 at the start of every epoch divisible by the frequency."""
    return 0.1 ** (epoch // decay_frequency) if decay_frequency > 0 else 1.0


# --------------------------------------------------------------------------- model and optimizer


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


def build_components(settings: Settings, device: torch.device) -> tuple[nn.Module, nn.Module | None, Any]:
    """The cell's model, its DA loss (None for ``da: none``) and its input augmentation (None for CAM, ADL)."""
    from dawsol.da import DALoss
    from dawsol.models import build_model
    from dawsol.wsol import InputAugmentation

    model = build_model(settings.model, settings.data.num_classes, settings.wsol).to(device)
    da_loss = None
    if settings.da is not None:
        da_loss = DALoss(settings.da, settings.data.num_classes, model.feature_dim).to(device)
    augmentation = InputAugmentation.create(settings.wsol)
    return model, da_loss, augmentation


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any], resume: Path | None = None) -> None:
    """``torch.save`` through a temporary file and an atomic rename.

    With ``resume``, that second name is linked to the new content *before* the rename, so
    whenever ``path`` holds a checkpoint, ``resume`` holds the same one (a kill between the two
    steps leaves ``resume`` one save ahead, never behind).
    """
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        if resume is not None:
            link_resume_state(tmp, resume)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; anything else is a one-line DawsolError."""
    if not path.is_file():
        raise DawsolError(f"{path}: no checkpoint (run: dawsol train <cell>)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unsupported content"
        raise DawsolError(
            f"{path}: refused, it is not a plain weights checkpoint (weights_only: {reason[:160]}); "
            "delete it and retrain, or only load files you trust"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DawsolError(
            f"{path}: unreadable checkpoint ({str(exc).splitlines()[0][:160]}); delete it and retrain"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DawsolError(f"{path}: not a dawsol checkpoint (format {CHECKPOINT_FORMAT}); delete it and retrain")
    return state


def check_compatible(state: dict[str, Any], settings: Settings, path: Path, training: bool = True) -> None:
    """Refuse a checkpoint of another backbone or other settings, saying what to do.

    Training compares the whole settings digest; evaluation (``training=False``) ignores the
    ``eval`` block, which does not change the weights.
    """
    if state["backbone"] != settings.model.backbone:
        raise DawsolError(
            f"{path}: checkpoint is for backbone {state['backbone']!r} but cell {settings.cell.name} uses "
            f"{settings.model.backbone!r}; delete {path.parent} to retrain this cell"
        )
    if training:
        same = state["settings_digest"] == settings.digest()
    else:
        mine = {k: v for k, v in settings.to_dict().items() if k != "eval"}
        same = {k: v for k, v in state["settings"].items() if k != "eval"} == mine
    if not same:
        raise DawsolError(
            f"{path}: checkpoint was trained with other settings (digest {state['settings_digest']}, now "
            f"{settings.digest()}); restore params.yaml or delete {path.parent} to retrain"
        )


def _rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        **{name: gen.get_state() for name, gen in generators.items()},
    }


def _restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    random.setstate(_as_tuples(state["python"]))
    numpy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in generators.items():
        gen.set_state(state[name])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


# --------------------------------------------------------------------------- signals, progress


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM/SIGINT while training runs (main thread only)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: Any) -> None:
        log.warning("received %s: saving a checkpoint after this batch", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
        for key in ("loss", "loss_c", "loss_d", "loss_u"):
            setattr(self, key, getattr(self, key) + losses[key] * size)

    def mean(self, key: str) -> float:
        return getattr(self, key) / max(self.images, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, tree: dict[str, Any]) -> EpochStats:
        return cls(**tree)


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainOutcome:
    """What ``train_cell`` did: the epochs now done and whether it trained anything."""

    epochs_done: int
    trained: bool
    records: list[dict[str, Any]]


def require_prepared(settings: Settings) -> Path:
    """The prepared dataset folder, or a DawsolError naming the command that prepares it."""
    dataset_dir = settings.dataset_dir
    missing = [s for s in ("train", "val", "test") if not (dataset_dir / "metadata" / s / "image_ids.txt").is_file()]
    if missing:
        raise DawsolError(
            f"{dataset_dir}: prepared data not found (no metadata/{missing[0]}/image_ids.txt); "
            f"run: dawsol prepare {settings.cell.dataset}"
        )
    return dataset_dir


class SeededSamples(torch.utils.data.Dataset):
    """Items ``dataset[index]`` fetched by key ``(index, seed)``, the random transforms drawn from
    ``seed`` alone: an image's crop and flip do not depend on which process, worker or batch
    position loads it (what makes W processes see exactly one process's data)."""

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


class TrainingLoop:
    """The state of one training run; ``run()`` trains the remaining epochs (also used by dawsol.estimate)."""

    def __init__(
        self,
        settings: Settings,
        device: torch.device,
        tracker: CellRun | None,
        progress: bool,
        dataset: torch.utils.data.Dataset | None = None,
    ) -> None:
        """``dataset`` (default: the cell's prepared train split) yields ``(image, label)``."""
        from dawsol.data.datasets import TrainDataset

        self.settings = settings
        self.device = device
        self.tracker = tracker
        self.progress = progress
        train = settings.train
        self.bf16 = train.bf16 and device.type == "cuda"
        self.channels_last = train.channels_last and device.type == "cuda"
        if (train.bf16 or train.channels_last) and device.type != "cuda":
            log.info("bf16 / channels_last apply on CUDA only; training in float32 on %s", device.type)
        seed_everything(settings.seed, device)
        self.dataset = (
            dataset
            if dataset is not None
            else TrainDataset(
                settings.dataset_dir,
                split="train",
                image_size=settings.data.image_size,
                resize_size=settings.data.resize_size,
            )
        )
        if len(self.dataset) == 0:
            raise DawsolError(
                f"{settings.dataset_dir}: the train split is empty; run: dawsol prepare {settings.cell.dataset}"
            )
        self.model, self.da_loss, self.augmentation = build_components(settings, device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dist = distributed.current()
        self.forward_model: nn.Module = self.model
        if self.dist.enabled:
            if device.type == "cuda":  # batch statistics over the global batch, as one process has them
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            device_ids = [device.index] if device.type == "cuda" else None
            self.forward_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = build_optimizer(self.model, self.da_loss, settings)
        self.batches = EpochBatches(len(self.dataset), train.batch_size, settings.seed)
        self._loader: torch.utils.data.DataLoader | None = None
        self.loader_gen = torch.Generator()
        self.augment_gen = torch.Generator()
        self.iters_per_epoch = math.ceil(len(self.dataset) / train.batch_size)
        self.total_iters = self.iters_per_epoch * train.epochs
        self.records: list[dict[str, Any]] = []
        self.epoch = 0  # completed epochs
        self.batch = 0  # batches done in epoch ``self.epoch`` (0-based)
        self.stats = EpochStats()
        self.run_id: str | None = None

    # -- checkpoint state

    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "cell": self.settings.cell.name,
            "backbone": self.settings.model.backbone,
            "settings_digest": self.settings.digest(),
            "settings": self.settings.to_dict(),
            "num_classes": self.settings.data.num_classes,
            "epoch": self.epoch,
            "epochs": self.settings.train.epochs,
            "batch": self.batch,
            "stats": self.stats.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "da": None if self.da_loss is None else self.da_loss.state_dict(),
            "rng": _rng_state({"loader": self.loader_gen, "augment": self.augment_gen}),
            "records": self.records,
            "mlflow_run_id": self.run_id,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.da_loss is not None:
            self.da_loss.load_state_dict(state["da"])
        _restore_rng(state["rng"], {"loader": self.loader_gen, "augment": self.augment_gen})
        self.epoch = state["epoch"]
        self.batch = state["batch"]
        self.stats = EpochStats.from_dict(state["stats"])
        self.records = list(state["records"])
        self.run_id = state["mlflow_run_id"]

    def save(self) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(checkpoint_path(self.settings), self.state(), resume=resume_path(self.settings))
        lines = "".join(json.dumps(record, sort_keys=False) + "\n" for record in self.records)
        atomic_write_text(train_log_path(self.settings), lines)

    # -- epochs

    def loader(self, epoch: int, start_batch: int) -> torch.utils.data.DataLoader:
        """The epoch's batches from ``start_batch`` on (see ``EpochBatches``); one loader for the
        whole run, so workers persist across epochs; pinned memory on CUDA."""
        self.batches.epoch, self.batches.start_batch = epoch, start_batch
        self.loader_gen.manual_seed(epoch_seed(self.settings.seed, epoch, stream=1))
        if self._loader is None:
            workers = self.settings.data.num_workers
            self._loader = torch.utils.data.DataLoader(
                SeededSamples(self.dataset),
                batch_sampler=self.batches,
                num_workers=workers,
                generator=self.loader_gen,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
            )
        return self._loader

    def step(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int, iteration: int
    ) -> tuple[int, dict[str, float]]:
        """One optimisation step; returns the number of correct predictions and the losses."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.augmentation is None:
            batch = MixedBatch(images, labels, None, 1.0)
        else:
            batch = self.augmentation.apply(images, labels, self.augment_gen)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with autocast:
            out = self.forward_model(batch.images)
        logits = out.logits.float()
        loss_c = F.cross_entropy(logits, batch.labels_a)
        if batch.labels_b is not None:
            loss_c = batch.weight_a * loss_c + (1 - batch.weight_a) * F.cross_entropy(logits, batch.labels_b)
        # under torchrun: this rank's share of the global mean (DDP averages the gradients); 1 alone
        loss_c = loss_c * (len(labels) / distributed.global_denominator(loss_c.new_tensor(float(len(labels)))))
        zero = logits.new_zeros(())
        loss_d, loss_u = zero, zero
        da = self.settings.da
        if self.da_loss is not None and da is not None and epoch > da.start_epoch:
            progress = iteration / self.total_iters
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
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.dist.enabled and self.da_loss is not None:  # the DANN discriminator is outside DDP
            for param in self.da_loss.parameters():
                if param.grad is not None:
                    param.grad = distributed.all_reduce_sum(param.grad) / self.dist.world_size
        self.optimizer.step()
        terms = torch.stack([loss, loss_c, loss_d, loss_u]).detach()
        if self.dist.enabled:  # the ranks' shares add up to the global batch's values
            terms = distributed.all_reduce_sum(terms) / self.dist.world_size
        values = dict(zip(("loss", "loss_c", "loss_d", "loss_u"), terms.tolist(), strict=True))
        if not math.isfinite(values["loss"]):
            raise DawsolError(
                f"cell {self.settings.cell.name}: the loss became {values['loss']} at epoch {epoch + 1}, "
                f"iteration {iteration}; lower train.lr in params.yaml and delete {run_dir(self.settings)}"
            )
        correct = int(distributed.all_reduce_sum((logits.argmax(1) == labels).sum()).item())
        return correct, values

    def train_epoch(self, epoch: int, stop: threading.Event) -> bool:
        """Train the rest of 0-based ``epoch``; False if a signal stopped it (state saved)."""
        self.model.train()
        if self.da_loss is not None:
            self.da_loss.train()
        apply_schedule(self.optimizer, epoch + 1, self.settings.train.lr_decay_frequency)
        if self.batch == 0:
            self.augment_gen.manual_seed(epoch_seed(self.settings.seed, epoch, stream=2))
        batches = self.loader(epoch, self.batch)
        bar = _progress_bar(
            self.progress, self.iters_per_epoch, self.batch, f"epoch {epoch + 1}/{self.settings.train.epochs}"
        )
        log_every = max(1, self.iters_per_epoch // 10)
        started = time.perf_counter()
        for images, labels in batches:
            iteration = epoch * self.iters_per_epoch + self.batch
            correct, losses = self.step(images, labels, epoch, iteration)
            self.stats.add(sum(distributed.all_gather_sizes(len(labels))), correct, losses)
            self.batch += 1
            if bar is not None:
                elapsed = self.stats.seconds + time.perf_counter() - started
                bar.set_postfix(
                    img_s=f"{self.stats.images / max(elapsed, 1e-9):.0f}",
                    loss=f"{losses['loss']:.3f}",
                    L_d=f"{losses['loss_d']:.3f}",
                    L_u=f"{losses['loss_u']:.3f}",
                )
                bar.update(1)
            elif self.batch % log_every == 0 and self.batch < self.iters_per_epoch:
                elapsed = self.stats.seconds + time.perf_counter() - started
                log.info(
                    "epoch %d batch %d/%d: loss %.4f (L_d %.4f L_u %.4f) %.0f img/s",
                    epoch + 1,
                    self.batch,
                    self.iters_per_epoch,
                    losses["loss"],
                    losses["loss_d"],
                    losses["loss_u"],
                    self.stats.images / max(elapsed, 1e-9),
                )
            if distributed.any_rank(stop.is_set()):  # a signal on any rank stops every rank at this batch
                stop.set()
                break
        self.stats.seconds += time.perf_counter() - started
        if bar is not None:
            bar.close()
        return not stop.is_set()

    def finish_epoch(self, epoch: int, stop: threading.Event) -> dict[str, Any]:
        """Validate if due, build the epoch's record and reset the running sums."""
        from dawsol.inference import evaluate_split

        train = self.settings.train
        number = epoch + 1
        val = None
        if number % train.eval_every == 0 or number == train.epochs:
            val = evaluate_split(self.model, self.settings, "val", self.device, stop=stop).metrics
        stats = self.stats
        record = {
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
        return record

    def run(self) -> None:
        train = self.settings.train
        with _stop_on_signals() as stop:
            while self.epoch < train.epochs:
                epoch = self.epoch
                try:
                    if self.batch < self.iters_per_epoch and not self.train_epoch(epoch, stop):
                        raise Interrupted
                    record = self.finish_epoch(epoch, stop)
                except Interrupted:
                    self.save()
                    raise Interrupted(
                        f"cell {self.settings.cell.name}: stopped by a signal in epoch {epoch + 1} after "
                        f"{self.batch} batches; checkpoint saved, re-run the same command to resume"
                    ) from None
                self.records.append(record)
                self.epoch, self.batch, self.stats = epoch + 1, 0, EpochStats()
                self._report(record)
                self.save()

    def _report(self, record: dict[str, Any]) -> None:
        val = record["val"]
        summary = "".join(
            f" val {key} {val[key]:.2f}" for key in ("MaxBoxAccV2", "PxAP") if val and val.get(key) is not None
        )
        log.info(
            "%s epoch %d/%d: lr %.2e loss %.4f (L_c %.4f L_d %.4f L_u %.4f) acc %.1f%% %.0f img/s%s",
            self.settings.cell.name,
            record["epoch"],
            self.settings.train.epochs,
            record["lr"],
            record["loss"],
            record["loss_c"],
            record["loss_d"],
            record["loss_u"],
            record["train_acc"],
            record["images_per_s"],
            summary,
        )
        if self.tracker is not None:
            flat = {k: v for k, v in record.items() if k not in ("epoch", "val")}
            self.tracker.log_metrics(flat, step=record["epoch"], prefix="train.")
            if val:
                self.tracker.log_metrics(val, step=record["epoch"], prefix="val.")


def _progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)


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
    require_prepared(settings)
    ctx, device = distributed.init(select_device(device_name or settings.train.device))
    path = checkpoint_path(settings)
    state = None
    if not path.exists():
        path = _resume_state_after_cleanup(settings) or path
    if path.exists():
        state = load_checkpoint(path)
        check_compatible(state, settings, path)
        if state["epoch"] >= settings.train.epochs:
            log.info("%s: already trained (%d epochs in %s); nothing to do", settings.cell.name, state["epoch"], path)
            return TrainOutcome(state["epoch"], False, list(state["records"]))
        log.info(
            "%s: resuming from %s (epoch %d, batch %d)", settings.cell.name, path, state["epoch"] + 1, state["batch"]
        )
    else:
        train_log_path(settings).unlink(missing_ok=True)
    loop = TrainingLoop(settings, device, None, sys.stderr.isatty() if progress is None else progress)
    if state is not None:
        loop.load(state)
    if tracking and ctx.is_main:
        from dawsol.tracking import CellRun

        loop.tracker = CellRun.start(settings, loop.run_id)
        loop.run_id = loop.tracker.run_id
    log.info(
        "%s: training on %s x %d process(es), %d images, %d iterations per epoch",
        settings.cell.name,
        device,
        ctx.world_size,
        len(loop.dataset),
        loop.iters_per_epoch,
    )
    try:
        loop.run()
    except Interrupted:
        if loop.tracker is not None:
            loop.tracker.finish("KILLED")
        raise
    except BaseException:
        if loop.tracker is not None:
            loop.tracker.finish("FAILED")
        raise
    if loop.tracker is not None:
        _log_training_artifacts(loop)
        loop.tracker.finish()
    return TrainOutcome(loop.epoch, True, loop.records)


def _resume_state_after_cleanup(settings: Settings) -> Path | None:
    """The resume link of a cell whose checkpoint.pt a workflow manager deleted before re-running it.

    Usable only if it is an unfinished run of the same backbone and settings; otherwise (the
    settings changed, or a finished cell is being re-run on purpose) it is discarded and the cell
    starts over.
    """
    resume = resume_path(settings)
    if not resume.exists():
        return None
    try:
        state = load_checkpoint(resume)
        check_compatible(state, settings, resume)
    except DawsolError as exc:
        log.info("%s: not resuming from %s (%s); starting over", settings.cell.name, resume, exc)
        resume.unlink(missing_ok=True)
        return None
    if state["epoch"] >= settings.train.epochs:
        log.info("%s: %s holds a finished run; re-training as asked", settings.cell.name, resume)
        resume.unlink(missing_ok=True)
        return None
    return resume


def _log_training_artifacts(loop: TrainingLoop) -> None:
    """The resolved settings, the training log and (DA cells) the assigner's three sets on a few images."""
    import tempfile

    import yaml

    from dawsol.inference import draw_assignments

    tracker = loop.tracker
    assert tracker is not None
    tracker.log_artifact(train_log_path(loop.settings))
    with tempfile.TemporaryDirectory() as tmp:
        settings_file = Path(tmp) / "settings.yaml"
        settings_file.write_text(yaml.safe_dump(loop.settings.to_dict(), sort_keys=False))
        tracker.log_artifact(settings_file)
        if loop.da_loss is not None:
            figure = Path(tmp) / "assigner.png"
            with distributed.rank_local():  # rank 0 alone draws it
                draw_assignments(loop.model, loop.da_loss, loop.settings, loop.device, figure)
            tracker.log_artifact(figure)
