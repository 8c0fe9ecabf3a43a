"""One set of data checks where data is used: what ``dawsol validate`` flags in a split's metadata, train,
evaluate and metrics refuse too; images in any PIL mode are converted correctly or refused by name."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_fixtures import prepare_tiny_data, write_project

from dawsol.cli import main
from dawsol.config import load_params, resolve
from dawsol.data.datasets import load_image
from dawsol.data.metadata import validate_dataset
from dawsol.errors import DawsolError
from dawsol.evaluation.scoring import check_split, eval_dataset

CELL = "synthetic/resnet18/cam-none/seed0"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _drop_first_box(test: Path) -> None:
    lines = _lines(test / "localization.txt")
    first = lines[0].split(",")[0]
    (test / "localization.txt").write_text("\n".join(line for line in lines if not line.startswith(first + ",")))


def _duplicate_id(test: Path) -> None:
    lines = _lines(test / "image_ids.txt")
    (test / "image_ids.txt").write_text("\n".join([*lines, lines[0]]))


def _box_outside(test: Path) -> None:
    lines = _lines(test / "localization.txt")
    image_id = lines[0].split(",")[0]
    lines[0] = f"{image_id},0,0,5000,5000"
    (test / "localization.txt").write_text("\n".join(lines))


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "image without boxes": (_drop_first_box, "has no box in localization.txt"),
    "empty localization.txt": (lambda test: (test / "localization.txt").write_text(""), "no box lines, but"),
    "duplicate id": (_duplicate_id, "duplicate image id"),
    "box outside the image": (_box_outside, "lies outside the"),
    "empty class_labels.txt": (lambda test: (test / "class_labels.txt").write_text(""), "has no label in"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_what_validate_flags_every_command_refuses(
    tiny_data: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "synthetic"
    shutil.copytree(tiny_data, data)
    harm, expected = DAMAGES[damage]
    harm(data / "metadata" / "test")
    assert any(expected in str(problem) for problem in validate_dataset(data)), damage

    project = write_project(tmp_path / "project", data)
    monkeypatch.chdir(project)
    settings = resolve(CELL, load_params("params.yaml"), "params.yaml")
    with pytest.raises(DawsolError, match=expected):  # what train and evaluate check before their first step
        check_split(settings, "test")
    with pytest.raises(DawsolError, match=expected):
        eval_dataset(settings, "test")
    cams = tmp_path / "cams"
    cams.mkdir()
    argv = [
        "metrics",
        "--metadata",
        str(data / "metadata" / "test"),
        "--baseline",
        "center",
        "--out",
        str(tmp_path / "m.json"),
    ]
    assert main([*argv, "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and not (tmp_path / "m.json").exists()


def test_a_16_bit_image_is_scaled_not_clipped_and_a_float_image_is_refused_by_name(tmp_path: Path) -> None:
    deep = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    assert np.array(load_image(tmp_path, "deep.png"))[0, :, 0].tolist() == [0, 100, 255]

    Image.fromarray(np.full((3, 3), 0.5, dtype=np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(DawsolError, match=r"float\.tiff.*mode F \(32-bit floating-point pixels\)"):
        load_image(tmp_path, "float.tiff")
