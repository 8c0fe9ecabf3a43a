"""One cell, one result, whichever front door ran it: the thread count that decides the floating-point order is
dawsol's setting (``train.threads``), applied by the commands, not the launcher's environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fixtures import dawsol_env, prepare_tiny_data, write_project

CELL = "synthetic/resnet18/cam-mmd/seed0"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# the environments the front doors give a job: Snakemake pins a job's threads, DVC inherits the shell's
LAUNCHERS = {
    "snakemake": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "dvc": {},
    "busy shell": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"},
}


def _run_cell(project: Path, launcher: dict[str, str]) -> tuple[dict, dict[str, torch.Tensor]]:
    """train + evaluate CELL in a fresh process with the launcher's thread environment; (metrics, weights)."""
    env = {k: v for k, v in dawsol_env(project).items() if k not in THREAD_VARIABLES} | launcher
    for command in ("train", "evaluate"):
        done = subprocess.run(
            [sys.executable, "-m", "dawsol", command, CELL, "--no-tracking", "-q"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
    metrics = json.loads((project / "results" / "cells" / CELL / "metrics.json").read_text())
    weights = torch.load(project / "runs" / CELL / "checkpoint.pt", weights_only=True)["model"]
    return metrics, weights


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every launcher gives one thread")
def test_a_cell_gives_identical_metrics_under_every_launchers_thread_environment(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data = prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")
    results = {
        name: _run_cell(write_project(tmp_path_factory.mktemp(name.replace(" ", "_")), data), launcher)
        for name, launcher in LAUNCHERS.items()
    }
    (metrics, weights), *others = results.values()
    for other_metrics, other_weights in others:
        assert other_metrics == metrics
        assert all(torch.equal(other_weights[name], tensor) for name, tensor in weights.items())
