"""``dawsol localize``: one table of every box, class names from the dataset, outputs replaced only as a whole."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dawsol.config import apply_overrides, load_params, resolve
from dawsol.data.datasets import IMAGENET_NORMALIZATION
from dawsol.evaluation.localize import CSV_COLUMNS, Localizer, dataset_class_names, localize
from dawsol.models import build_model


def _localizer(class_names: list[str] | None) -> Localizer:
    settings = resolve("synthetic/resnet18/cam-none/seed0", load_params("params.yaml"))
    torch.manual_seed(0)
    model = build_model(settings.model, 3, settings.wsol).eval()
    return Localizer(model, 32, IMAGENET_NORMALIZATION, class_names, 0.2)


def _images(folder: Path) -> list[Path]:
    """Two images of one file name in two folders (the synthetic split's layout) and a third."""
    paths = [folder / "test/000/00004.png", folder / "test/003/00004.png", folder / "mine.jpg"]
    for k, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(k).integers(0, 256, (24 + 4 * k, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    return paths


def test_localize_writes_every_box_with_its_class_name(tmp_path: Path) -> None:
    images = _images(tmp_path / "in")
    out = tmp_path / "out"
    written = localize(_localizer(["circle", "square", "star"]), images, out, top_k=2)
    assert {p.name for p in written} == {
        *(f"{n}{suffix}" for n in ("000_00004", "003_00004", "mine") for suffix in ("_cam.png", ".json")),
        "localization.csv",
        "localization.json",
    }
    summary = json.loads((out / "localization.json").read_text())
    assert [r["output"] for r in summary["images"]] == ["000_00004", "003_00004", "mine"]
    assert [r["image"] for r in summary["images"]] == [str(p) for p in images]
    with open(out / "localization.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    for report in summary["images"]:
        assert len(report["top"]) == 2
        mine = [r for r in rows if r["output"] == report["output"]]
        expected = [(e["class_name"], e["boxes"]) for e in report["top"]]
        for name, boxes in expected:
            assert name in {"circle", "square", "star"}
            listed = [[int(r[c]) for c in ("x0", "y0", "x1", "y1")] for r in mine if r["class_name"] == name]
            assert listed == boxes and boxes  # every box of the class, in the image's pixels
    assert not list(out.glob(".*.tmp"))


def test_a_failed_localize_leaves_the_earlier_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = _images(tmp_path / "in")
    out = tmp_path / "out"
    localizer = _localizer(None)
    localize(localizer, images, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert json.loads(before["mine.json"])["top"][0]["class_name"].startswith("class ")  # no names: the index

    forward, calls = localizer.model.forward, []

    def failing(batch: torch.Tensor):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory")  # a failure after two images' outputs were written
        return forward(batch + 1)  # other outputs than the first run's, had they been kept

    monkeypatch.setattr(localizer.model, "forward", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        localize(localizer, images, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file either


def _dataset(root: Path, dataset: str, lines: list[str], num_classes: int):
    labels = root / dataset / "metadata" / "test" / "class_labels.txt"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("\n".join(lines) + "\n")
    params = load_params("params.yaml")
    cell = f"{dataset}/resnet18/cam-none/seed0"
    overrides = [f"data.root={root}", f"data.num_classes={num_classes}"]
    return resolve(cell, apply_overrides(params, cell, overrides))


def test_class_names_come_from_the_dataset_folders(tmp_path: Path) -> None:
    cub = ["001.Black_footed_Albatross/a_1.jpg,0", "001.Black_footed_Albatross/a_2.jpg,0", "002.Laysan/b_1.jpg,1"]
    assert dataset_class_names(_dataset(tmp_path, "cub", cub, 2)) == ["001.Black_footed_Albatross", "002.Laysan"]
    assert dataset_class_names(_dataset(tmp_path, "cub", cub, 3)) is None  # a class without images
    synthetic = ["test/000/00000.png,0", "test/001/00000.png,1"]
    assert dataset_class_names(_dataset(tmp_path, "synthetic", synthetic, 2)) is None  # folders name the index only
    shared = ["test/x/0.png,0", "test/x/1.png,1"]
    assert dataset_class_names(_dataset(tmp_path / "shared", "cub", shared, 2)) is None  # one folder, two classes
    ilsvrc = dataset_class_names(_dataset(tmp_path, "ilsvrc", ["val/ILSVRC2012_val_00000001.JPEG,65"], 1000))
    assert ilsvrc is not None and ilsvrc[0] == "tench" and len(ilsvrc) == 1000
    assert dataset_class_names(_dataset(tmp_path / "none", "openimages", [], 2)) is None
