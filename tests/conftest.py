"""Shared fixtures (the project root, a scratch copy of params.yaml, one torch thread) and the test tiers
(docs/testing.md)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dawsol.threads import pinned_threads

PROJECT_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    """A writable copy of the project's params.yaml in a temporary directory."""
    target = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", target)
    return target


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for the test, restored afterwards (other tests compare in- and out-of-process
    runs); a module takes it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch  # here, not at the top: most test modules never import torch

    with pinned_threads(torch.get_num_threads, torch.set_num_threads):
        yield


# The suite writes about 2 GB of temporary files over its run (full-size VGG16 checkpoints, the importer's
# 60-200 MB official-layout files, project copies), each deleted once its test passes;
# a nearly full disk shows up as scattered "database or disk is full" / setup errors.
LOW_DISK_BYTES = 2 * 1024**3


def pytest_report_header(config: pytest.Config) -> str:
    """Name the free space where temporary directories go, so a disk-full failure is recognisable."""
    free = shutil.disk_usage(tempfile.gettempdir()).free
    line = f"free disk space in {tempfile.gettempdir()}: {free / 1024**3:.1f} GiB"
    if free < LOW_DISK_BYTES:
        line += f" -- WARNING: below {LOW_DISK_BYTES / 1024**3:.0f} GiB, tests that write checkpoints may fail"
    return line


# tests that need Slurm, Chromium or CUDA are also slow: `pytest -m "not slow"` (the inner loop) never starts them
SLOW_WITH = ("cluster", "browser", "gpu")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every `cluster`, `browser` and `gpu` test `slow` too, before `-m` selects (hence `tryfirst`)."""
    for item in items:
        if item.get_closest_marker("slow") is None and any(item.get_closest_marker(name) for name in SLOW_WITH):
            item.add_marker(pytest.mark.slow)
