"""The synthetic WSOL benchmark: format, determinism, idempotence, and its built-in failure modes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from data_fixtures import digest_tree

from dawsol.data.datasets import EvalDataset
from dawsol.data.metadata import read_split, validate_dataset
from dawsol.data.synthetic import STAMP, SyntheticConfig, class_style, generate_image, prepare_synthetic
from dawsol.errors import DawsolError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_config() -> SyntheticConfig:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    return SyntheticConfig.from_params(params["synthetic"])


def tiny_config(**changes) -> SyntheticConfig:
    base = dict(num_classes=2, train_per_class=4, val_per_class=2, test_per_class=2)
    return dataclasses.replace(project_config(), **{**base, **changes})


def test_the_tiny_benchmark_is_valid_and_complete(tmp_path: Path) -> None:
    config = tiny_config()
    assert prepare_synthetic(config, tmp_path / "synthetic")
    root = tmp_path / "synthetic"
    assert validate_dataset(root, num_classes=2) == []
    train, val = read_split(root / "metadata/train"), read_split(root / "metadata/val")
    assert len(train.image_ids) == 8 and len(val.image_ids) == 4
    assert sorted(set(train.labels.values())) == [0, 1]
    assert not train.masks and all(train.boxes[i] for i in train.image_ids)
    for image_id in val.image_ids:
        assert len(val.masks[image_id]) == len(val.boxes[image_id]) >= 1
        assert val.ignore_masks[image_id] is not None
        width, height = val.sizes[image_id]
        low, high = config.image_size
        assert low <= width <= high and low <= height <= high
    # boxes live in localization.txt, masks in the parallel file
    assert (root / "metadata/val/mask_localization.txt").is_file()
    item = EvalDataset(root, "test", 32)[0]
    assert item["boxes"].shape[1] == 4 and set(np.unique(item["mask"])) <= {0, 1, 255}


def test_generation_is_deterministic_and_seeded(tmp_path: Path) -> None:
    config = tiny_config()
    prepare_synthetic(config, tmp_path / "a")
    prepare_synthetic(config, tmp_path / "b")
    prepare_synthetic(dataclasses.replace(config, seed=1), tmp_path / "c")
    a, b, c = (digest_tree(tmp_path / n, but=STAMP) for n in "abc")
    assert a == b
    images = [k for k in a if not k.startswith(("masks", "metadata"))]
    assert images == [k for k in c if not k.startswith(("masks", "metadata"))]
    assert all(a[k] != c[k] for k in images)


def test_rerun_does_nothing_and_a_changed_knob_regenerates(tmp_path: Path) -> None:
    config = tiny_config()
    root = tmp_path / "synthetic"
    assert prepare_synthetic(config, root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert not prepare_synthetic(config, root)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert prepare_synthetic(dataclasses.replace(config, clutter=0.1), root)
    assert not list(tmp_path.glob(".synthetic.*"))  # no temporary folders left behind
    # damage is detected and repaired
    (root / "test/001/00001.png").unlink()
    assert prepare_synthetic(dataclasses.replace(config, clutter=0.1), root)
    assert validate_dataset(root, num_classes=2) == []


def test_config_errors_name_the_key() -> None:
    block = dataclasses.asdict(project_config())
    with pytest.raises(DawsolError, match=r"synthetic\.colour: unknown key"):
        SyntheticConfig.from_params({**block, "colour": 1})
    del block["clutter"]
    with pytest.raises(DawsolError, match=r"synthetic\.clutter is missing"):
        SyntheticConfig.from_params(block)


def _part_and_body_pixels(config: SyntheticConfig, label: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    image, masks = generate_image(config, label, np.random.default_rng(seed))
    part_color = (class_style(label, config.num_classes).part_color * 255).astype(int)
    foreground = np.any(masks, axis=0)
    close = np.abs(image.astype(int) - part_color).max(axis=2) < 40
    return image[foreground & close], image[foreground & ~close]


def test_failure_modes_are_built_in() -> None:
    """Small exact-colour parts, large bodies of a shared texture, and class-correlated backgrounds."""
    config = project_config()
    part_fractions = []
    for label in range(config.num_classes):
        for seed in range(3):
            part, body = _part_and_body_pixels(config, label, seed)
            part_fractions.append(len(part) / (len(part) + len(body)))
    # the predictive part is a small fraction of the object (the body dominates the box and mask)
    assert 0.01 < float(np.median(part_fractions)) < 0.2
    # parts differ across classes; their colours are exact and unique per class
    colors = {tuple(class_style(c, config.num_classes).part_color.round(3)) for c in range(config.num_classes)}
    shapes = {class_style(c, config.num_classes).part_shape for c in range(config.num_classes)}
    assert len(colors) == len(shapes) == config.num_classes
    # context: with context_prob 1 every image of a class shares a background; with 0 never its own
    always = dataclasses.replace(config, context_prob=1.0, clutter=0.0, max_objects=1, object_scale=(0.3, 0.3))
    corners = [generate_image(always, 0, np.random.default_rng(s))[0][:3, :3].mean((0, 1)) for s in range(4)]
    other = [generate_image(always, 3, np.random.default_rng(s))[0][:3, :3].mean((0, 1)) for s in range(4)]
    spread = np.ptp(corners, axis=0).max()
    assert spread < np.abs(np.mean(corners, 0) - np.mean(other, 0)).max()


def test_prepare_and_validate_commands(tmp_path: Path) -> None:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["defaults"]["data"]["root"] = "prepared"
    params["synthetic"].update(num_classes=2, train_per_class=2, val_per_class=1, test_per_class=1)
    params["datasets"]["synthetic"]["data"]["num_classes"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dawsol", *args], capture_output=True, text=True, cwd=tmp_path)

    first = cli("prepare", "synthetic", "--grid", "grid.png")
    assert first.returncode == 0, first.stderr
    assert "generated" in first.stdout and (tmp_path / "grid.png").stat().st_size > 0
    second = cli("prepare", "synthetic")
    assert second.returncode == 0 and "up to date" in second.stdout
    valid = cli("validate", "prepared/synthetic")
    assert valid.returncode == 0, valid.stderr
    params["datasets"]["synthetic"]["data"]["num_classes"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    mismatch = cli("prepare", "synthetic")
    assert mismatch.returncode == 1 and "make them equal" in mismatch.stderr
