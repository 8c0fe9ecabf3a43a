"""Multi-process (DistributedDataParallel) training and evaluation under ``torchrun``.

Data sharding is designed so that W processes compute what one process computes on the same
data: every rank walks the same global batches, takes its contiguous slice of each
(``shard``), and every batch-level quantity is made global: gradients are averaged by DDP of
losses normalised by global counts (``global_denominator``), random draws are made for the whole
batch on every rank and sliced (``global_rows``), and the assigner's anchor updates are summed
over ranks before the same running mean is applied everywhere, so the anchors stay identical on
every rank. Evaluation accumulators (counts and histograms) are merged in rank order.

Outside ``torchrun`` (or with one process) every function here is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")

_rank_local = False  # inside ``rank_local()``: no collectives


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size``, GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment carries a multi-process torchrun job (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun job (NCCL on CUDA, with GPU ``LOCAL_RANK``; gloo otherwise) and return
    this process's place and device; a single process gets ``Dist()`` and ``device`` unchanged."""
    if not launched_by_torchrun():
        return current(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return current(), device


def current() -> Dist:
    """The running job's ``Dist`` (``Dist()`` when no process group is initialised or inside ``rank_local``)."""
    if _rank_local or not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def rank_local() -> Iterator[None]:
    """Code that runs on one rank only (e.g. rank 0's figures): every function here acts as in one process."""
    global _rank_local
    previous, _rank_local = _rank_local, True
    try:
        yield
    finally:
        _rank_local = previous


def launch_command(gpus: int, dawsol_args: list[str]) -> list[str] | None:
    """The torchrun command line that runs ``dawsol <dawsol_args>`` on ``min(gpus, visible GPUs)``
    processes, or None when one process is right (already under torchrun, no CUDA, or one GPU)."""
    if launched_by_torchrun() or not torch.cuda.is_available():
        return None
    processes = min(gpus, torch.cuda.device_count())
    if processes < 2:
        return None
    import sys

    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*run, "-m", "dawsol", *dawsol_args]


def run_launcher(command: list[str]) -> int:
    """Run ``launch_command``'s torchrun and return its exit code; a SIGTERM to this process (a
    preempted job) is passed on, so the ranks save their checkpoint before the job ends."""
    import signal
    import subprocess

    process = subprocess.Popen(command)
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: process.send_signal(signum))
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_bounds(total: int, ctx: Dist | None = None) -> tuple[int, int]:
    """``[start, stop)`` of this rank's contiguous slice of ``total`` items (sizes differ by at most 1)."""
    ctx = ctx or current()
    base, extra = divmod(total, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return start, start + base + (1 if ctx.rank < extra else 0)


def shard(items: list[T], ctx: Dist | None = None) -> list[T]:
    """This rank's contiguous slice of ``items``."""
    start, stop = shard_bounds(len(items), ctx)
    return items[start:stop]


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over ranks (a new tensor, identical on every rank)."""
    if not current().enabled:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def global_rows(local: int) -> tuple[int, int]:
    """(rows in the whole global batch, offset of this rank's rows) for ``local`` rows here."""
    ctx = current()
    if not ctx.enabled:
        return local, 0
    sizes = all_gather_sizes(local)
    return sum(sizes), sum(sizes[: ctx.rank])


def all_gather_sizes(local: int) -> list[int]:
    """Every rank's ``local``, in rank order."""
    ctx = current()
    if not ctx.enabled:
        return [local]
    sizes = [torch.zeros((), dtype=torch.int64, device=_collective_device()) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.tensor(local, dtype=torch.int64, device=_collective_device()))
    return [int(s) for s in sizes]


def all_gather_cat(tensor: Tensor) -> Tensor:
    """The rank-ordered concatenation (dim 0) of every rank's ``tensor`` (no gradient)."""
    ctx = current()
    if not ctx.enabled:
        return tensor
    sizes = all_gather_sizes(tensor.shape[0])
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def global_denominator(count: Tensor) -> Tensor:
    """The denominator that makes a rank's ``local_sum / d`` average (as DDP averages gradients)
    to ``global_sum / max(global_count, 1)``: ``max(global_count, 1) / world_size``; in one
    process ``max(count, 1)``."""
    ctx = current()
    if not ctx.enabled:
        return count.clamp_min(1.0)
    return all_reduce_sum(count).clamp_min(1.0) / ctx.world_size


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    ctx = current()
    if not ctx.enabled:
        return [obj]
    objects: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(objects, obj)
    return objects


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. a SIGTERM that reached one rank)."""
    if not current().enabled:
        return flag
    return bool(all_reduce_sum(torch.tensor(float(flag), device=_collective_device())) > 0)


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
