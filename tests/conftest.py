"""Shared fixtures: the project root and a scratch copy of params.yaml."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

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
