"""Staging leftovers of a killed command are removed by the next run of the same command (issue 26): `dawsol
prepare` (a synthetic build, a downloaded dataset's build) and `dawsol cams` (its staging and set-aside folders).
`dawsol train`, `evaluate` and `report` leave only atomic writes' temporary files: tests/test_train.py and
tests/test_output_safety.py kill them and check the rerun removes those."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from train_fixtures import kill_at, prepare_tiny_data, run_in, write_project

CELL = "synthetic/resnet18/cam-none/seed0"


def hidden(folder: Path) -> list[str]:
    """The hidden entries of ``folder`` (where staging folders live)."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


@pytest.mark.slow
def test_a_killed_synthetic_prepare_leaves_staging_that_the_next_prepare_removes(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", None)
    data = project / "data"
    kill_at(project, "cv2.imwrite", 5, "prepare", "synthetic")  # killed while writing the images
    assert hidden(data), "the kill left no staging folder: the test kills too late"
    assert run_in(project, "prepare", "synthetic") == 0
    assert hidden(data) == [] and (data / "synthetic" / "metadata").is_dir()

    # a re-prepare with other settings, killed: the old dataset stays beside the staging folder; the next run
    # with the old settings finds the dataset up to date, and still removes the staging folder
    params = yaml.safe_load((project / "params.yaml").read_text())
    original = (project / "params.yaml").read_text()
    params["synthetic"]["seed"] = params["synthetic"].get("seed", 0) + 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    kill_at(project, "cv2.imwrite", 5, "prepare", "synthetic")
    assert hidden(data)
    (project / "params.yaml").write_text(original)
    assert run_in(project, "prepare", "synthetic") == 0
    assert hidden(data) == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CELL trained for one epoch on the tiny benchmark."""
    data = prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")
    project = write_project(tmp_path_factory.mktemp("trained"), data, datasets={"synthetic": {"train": {"epochs": 1}}})
    assert run_in(project, "train", CELL, "--no-tracking") == 0
    return project


@pytest.mark.slow
def test_a_killed_cams_leaves_folders_that_the_next_cams_removes(trained: Path) -> None:
    checkpoint = str(trained / "runs" / CELL / "checkpoint.pt")
    command = ("cams", "--checkpoint", checkpoint, "--method", "cam", "--split", "val", "--device", "cpu")
    maps = trained / "maps"
    assert run_in(trained, *command, "--out", "maps/cam") == 0
    first = sorted(path.name for path in (maps / "cam").iterdir())
    kill_at(trained, "numpy.save", 2, *command, "--out", "maps/cam")  # killed while writing the maps
    assert [name.split("-")[0] for name in hidden(maps)] == [".cam.staging"]
    assert run_in(trained, *command, "--out", "maps/cam") == 0
    assert hidden(maps) == []
    # killed between setting the old folder aside and renaming the new one in: both are left, no maps/cam
    kill_at(trained, "os.rename", 2, *command, "--out", "maps/cam")
    assert [name.split("-")[0] for name in hidden(maps)] == [".cam.old", ".cam.staging"]
    assert run_in(trained, *command, "--out", "maps/cam") == 0
    assert hidden(maps) == []
    assert sorted(path.name for path in (maps / "cam").iterdir()) == first
