"""A cell whose DA terms never switch on (``da.start_epoch`` too late for ``train.epochs``) is a one-line
warning wherever its settings are resolved: ``dawsol resolve``, DVC's ``dawsol settings``, Snakemake, training."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_fixtures import copy_project, run_tool

from dawsol.config import apply_overrides, load_params, resolve
from dawsol.errors import DawsolError

CELL = "synthetic/efficientnet_lite0/cam-mmd/seed1"  # a cell of the default grid
NEVER = f"cell {CELL}: its DA terms never switch on"


def _settings(params_copy: Path, *overrides: str):
    return resolve(CELL, apply_overrides(load_params(params_copy), CELL, list(overrides)), params_copy)


@pytest.mark.parametrize(
    ("epochs", "start_epoch", "never"),
    [
        (1, 1, True),  # the dataset's start_epoch with a one-epoch run
        (1, 0, True),  # on after 0-based epoch 0: epoch 1 is not trained
        (2, 1, True),
        (2, 0, False),  # on in the second epoch
        (1, -1, False),  # on from the first epoch
        (10, 1, False),
    ],
)
def test_the_warning_follows_the_objectives_rule(params_copy: Path, epochs: int, start_epoch: int, never: bool):
    settings = _settings(params_copy, f"train.epochs={epochs}", f"da.start_epoch={start_epoch}")
    assert settings.da is not None
    assert never == (not any(settings.da.active(epoch) for epoch in range(epochs)))
    warning = settings.da_never_active()
    assert (warning is not None) == never
    if never:
        assert warning.startswith(NEVER) and "\n" not in warning
        assert f"train.epochs {epochs}" in warning and f"da.start_epoch {start_epoch}" in warning


def test_a_cell_without_da_never_warns(params_copy: Path):
    settings = resolve(CELL.replace("cam-mmd", "cam-none"), load_params(params_copy), params_copy)
    assert settings.da is None and settings.da_never_active() is None


def _dawsol(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "dawsol", *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "never switch on" in line]


def test_dawsol_resolve_warns_in_one_line(params_copy: Path):
    plain = _dawsol("resolve", CELL, "--params", str(params_copy), cwd=params_copy.parent)
    assert _warnings(plain.stderr) == []
    one_epoch = _dawsol("resolve", CELL, "train.epochs=1", "--params", str(params_copy), cwd=params_copy.parent)
    [warning] = _warnings(one_epoch.stderr)
    assert "WARNING" in warning and NEVER in warning and "train.epochs 1" in warning


def _one_epoch_cell(params_file: Path) -> None:
    params = yaml.safe_load(params_file.read_text())
    params["cells"] = {CELL: {"train": {"epochs": 1}}}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_settings_stage_warns_for_that_cell_only(params_copy: Path):
    _one_epoch_cell(params_copy)
    out = params_copy.parent / "runs"
    result = _dawsol("settings", "--params", str(params_copy), "--out-dir", str(out), cwd=params_copy.parent)
    [warning] = _warnings(result.stderr)
    assert NEVER in warning
    assert (out / CELL / "resolved.json").is_file()


@pytest.mark.slow
def test_snakemake_warns_when_it_reads_the_grid(tmp_path: Path, project_root: Path):
    project = copy_project(project_root, tmp_path / "project")

    def dry_run() -> str:  # Snakemake's logger: its own stream (stdout in a dry run) and .snakemake/log
        result = run_tool(["snakemake", "-n", "--cores", "1"], project)
        return result.stdout + result.stderr

    assert _warnings(dry_run()) == []
    _one_epoch_cell(project / "params.yaml")
    [warning] = _warnings(dry_run())
    assert warning.startswith(f"warning: {NEVER}")


def test_training_warns_before_it_starts(params_copy: Path, caplog: pytest.LogCaptureFixture):
    from dawsol.training.cell import train_cell

    settings = _settings(params_copy, "train.epochs=1", f"data.root={params_copy.parent / 'nodata'}")
    with caplog.at_level(logging.WARNING), pytest.raises(DawsolError, match="run: dawsol prepare synthetic"):
        train_cell(settings, device_name="cpu", tracking=False)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [settings.da_never_active()]
