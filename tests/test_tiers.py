"""The test tiers (docs/testing.md): what `pytest -m "not slow"` leaves out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tiers import FULL_SIZE_BACKBONES

from dawsol.models.registry import BACKBONES

# the only tests of these files that need no Slurm, Chromium or CUDA
NEEDS_MACHINERY = (
    "tests/test_browser.py",
    "tests/test_browser_mlflow_results.py",
    "tests/test_slurm_cluster.py",
    "tests/test_gpu.py",
)
RUNS_WITHOUT = {"tests/test_slurm_cluster.py::test_missing_slurm_fails_under_ci"}


def collected(project_root: Path, *args: str) -> set[str]:
    """The test ids pytest selects with ``args`` (collection only: nothing runs)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=project_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode in (0, 5), result.stdout[-2000:] + result.stderr[-2000:]  # 5: nothing selected
    return {line for line in result.stdout.splitlines() if "::" in line}


def test_cluster_browser_and_gpu_tests_are_slow(project_root: Path) -> None:
    """Marked in their files and made `slow` by conftest: the inner loop keeps only what needs none of them."""
    assert collected(project_root, "-m", "not slow", *NEEDS_MACHINERY) == RUNS_WITHOUT


def test_the_full_size_backbones_are_registered() -> None:
    assert set(BACKBONES) > FULL_SIZE_BACKBONES
