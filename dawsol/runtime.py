"""The process a cell runs in: device choice, seeding and determinism, epoch seeds, RNG capture, stop signals.

Nothing here runs on import or in a constructor: ``dawsol train`` seeds the process where it
runs a cell (``seed_everything``), and code that only measures (``dawsol estimate``) borrows
the training mode for a while (``deterministic``) and gives the process back as it was.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from dawsol.errors import DawsolError

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Work stopped on SIGTERM/SIGINT (training saved a checkpoint first); re-run to resume."""


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


def _set_training_mode(device: torch.device) -> None:
    """Deterministic algorithms on CPU (bit-exact runs), fast cuDNN kernels on CUDA."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        # Deterministic mode also NaN-fills every new tensor (a fifth of a CPU step); our results never read
        # uninitialised memory, so the fill buys nothing.
        torch.utils.deterministic.fill_uninitialized_memory = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed python, numpy and torch and put the process in training mode for ``device`` (for good)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    _set_training_mode(device)


@contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Training's determinism settings for ``device`` while the block runs; the previous ones after."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
        torch.backends.cudnn.benchmark,
    )
    _set_training_mode(device)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]
        torch.backends.cudnn.benchmark = previous[3]


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed that is a pure function of (seed, 0-based epoch, stream)."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The state of python's, numpy's, torch's (and CUDA's) global RNGs and of ``generators``."""
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


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put back what ``rng_state`` captured (CUDA's only on the same number of devices)."""
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


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM/SIGINT while the block runs (main thread only; elsewhere it is never set)."""
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


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
