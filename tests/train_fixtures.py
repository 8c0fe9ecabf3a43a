"""A tiny synthetic project (params.yaml + prepared data) for the training and evaluation tests, and `dawsol`
run in it (in this process, or a subprocess killed at a chosen call)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from dawsol import cli
from dawsol.config import deep_merge

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# 3 classes x (12 train, 2 val, 3 test) images of 32-40 px; 3 epochs of 5 batches; DA from epoch 2.
TINY = {
    "synthetic": {
        "num_classes": 3,
        "image_size": [32, 40],
        "train_per_class": 12,
        "val_per_class": 2,
        "test_per_class": 3,
        "max_objects": 1,
    },
    "datasets": {
        "synthetic": {
            "data": {"num_classes": 3, "image_size": 32, "resize_size": 36, "num_workers": 0},
            "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "lr_decay_frequency": 2, "eval_every": 1},
            "da": {"start_epoch": 0, "sample_num_source": 4, "sample_num_target": 4},
        }
    },
    "defaults": {"eval": {"cam_curve_interval": 0.01, "batch_size": 8}},
}


def tiny_params() -> dict:
    """The project's params.yaml with the tiny overrides."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    return deep_merge(params, TINY)


def write_project(folder: Path, data: Path | None, **overrides: dict) -> Path:
    """A project folder with the tiny params.yaml and ``data/synthetic`` linked to ``data``."""
    folder.mkdir(parents=True, exist_ok=True)
    params = deep_merge(tiny_params(), overrides)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if data is not None:
        (folder / "data").mkdir(exist_ok=True)
        (folder / "data" / "synthetic").symlink_to(data, target_is_directory=True)
    return folder


def evaluated_project(folder: Path, data: Path, cell: str) -> Path:
    """A tiny project in ``folder`` on ``data`` with ``cell`` trained and evaluated, without tracking."""
    project = write_project(folder, data)
    for command in ("train", "evaluate"):
        assert run_in(project, command, cell, "--no-tracking") == 0
    return project


def prepare_tiny_data(folder: Path) -> Path:
    """Generate the tiny synthetic benchmark into ``folder`` with the data library."""
    from dawsol.data.synthetic import SyntheticConfig, prepare_synthetic

    prepare_synthetic(SyntheticConfig.from_params(tiny_params()["synthetic"]), folder)
    return folder


def run_in(project: Path, *args: str) -> int:
    """``dawsol ARGS`` in this process, in ``project``; returns the exit code."""
    previous = Path.cwd()
    os.chdir(project)
    try:
        return cli.main(list(args))
    finally:
        os.chdir(previous)


def dawsol_env(project: Path) -> dict[str, str]:
    """Environment for a ``python -m dawsol`` subprocess in ``project`` (its own sqlite store)."""
    return {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def start(project: Path, *args: str) -> subprocess.Popen:
    """Start ``python -m dawsol ARGS`` in ``project``."""
    return subprocess.Popen(
        [sys.executable, "-m", "dawsol", *args],
        cwd=project,
        env=dawsol_env(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# `dawsol ARGS`, SIGKILLed at the nth call of MODULE.NAME (a point in the middle of its work)
KILLER = """
import importlib, os, signal, sys
from dawsol import cli
module_name, name = sys.argv[1].rsplit(".", 1)
module = importlib.import_module(module_name)
nth, real, calls = int(sys.argv[2]), getattr(module, name), []
def killing(*args, **kwargs):
    calls.append(1)
    if len(calls) == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
setattr(module, name, killing)
sys.exit(cli.main(sys.argv[3:]))
"""


def kill_at(project: Path, function: str, nth: int, *args: str) -> None:
    """Run ``dawsol ARGS`` in ``project``; SIGKILL it at its ``nth`` call of ``function`` (``module.name``, e.g.
    ``os.replace``: a point in the middle of its work)."""
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, function, str(nth), *args],
        cwd=project,
        env=dawsol_env(project),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
