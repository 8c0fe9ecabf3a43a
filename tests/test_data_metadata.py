"""The wsolevaluation metadata format: exact bytes, round trips, and every validation error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import make_dataset

from dawsol.data.metadata import SplitMetadata, read_split, validate_dataset, write_split
from dawsol.errors import DawsolError


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "tiny")


def test_written_files_have_the_exact_wsolevaluation_bytes(tmp_path: Path) -> None:
    meta = SplitMetadata(
        image_ids=["a.jpg", "b.jpg"],
        labels={"a.jpg": 0, "b.jpg": 3},
        sizes={"a.jpg": (10, 20), "b.jpg": (30, 40)},
        boxes={"a.jpg": [(1, 2, 3, 4)], "b.jpg": [(0, 0, 5, 5), (6, 6, 9, 9)]},
    )
    write_split(tmp_path, meta)
    assert (tmp_path / "image_ids.txt").read_bytes() == b"a.jpg\nb.jpg"
    assert (tmp_path / "class_labels.txt").read_bytes() == b"a.jpg,0\nb.jpg,3"
    assert (tmp_path / "image_sizes.txt").read_bytes() == b"a.jpg,10,20\nb.jpg,30,40"
    assert (tmp_path / "localization.txt").read_bytes() == b"a.jpg,1,2,3,4\nb.jpg,0,0,5,5\nb.jpg,6,6,9,9"
    assert not (tmp_path / "mask_localization.txt").exists()
    assert read_split(tmp_path) == meta


def test_openimages_style_masks_without_sizes(tmp_path: Path) -> None:
    meta = SplitMetadata(
        image_ids=["v/x.jpg", "v/y.jpg"],
        labels={"v/x.jpg": 1, "v/y.jpg": 0},
        masks={"v/x.jpg": ["v/x_m1.png", "v/x_m2.png"], "v/y.jpg": ["v/y_m1.png"]},
        ignore_masks={"v/x.jpg": "v/x_ignore.png", "v/y.jpg": "v/y_ignore.png"},
    )
    write_split(tmp_path, meta)
    assert (tmp_path / "image_sizes.txt").read_bytes() == b""
    assert (tmp_path / "localization.txt").read_bytes() == (
        b"v/x.jpg,v/x_m1.png,v/x_ignore.png\nv/x.jpg,v/x_m2.png,\nv/y.jpg,v/y_m1.png,v/y_ignore.png"
    )
    assert read_split(tmp_path) == meta


def test_boxes_and_masks_together_use_the_parallel_mask_file(tmp_path: Path) -> None:
    meta = SplitMetadata(
        image_ids=["a.png"],
        labels={"a.png": 0},
        sizes={"a.png": (8, 8)},
        boxes={"a.png": [(0, 0, 7, 7)]},
        masks={"a.png": ["a_m0.png"]},
        ignore_masks={"a.png": None},
        proxy_ids=["a.png"],
    )
    write_split(tmp_path, meta)
    assert (tmp_path / "localization.txt").read_bytes() == b"a.png,0,0,7,7"
    assert (tmp_path / "mask_localization.txt").read_bytes() == b"a.png,a_m0.png,"
    assert (tmp_path / "image_ids_proxy.txt").read_bytes() == b"a.png"
    assert read_split(tmp_path) == meta


def test_read_tolerates_a_final_newline(tmp_path: Path) -> None:
    (tmp_path / "image_ids.txt").write_text("a.jpg\nb.jpg\n")
    (tmp_path / "class_labels.txt").write_text("a.jpg,0\nb.jpg,1\n")
    meta = read_split(tmp_path)
    assert meta.image_ids == ["a.jpg", "b.jpg"] and meta.labels == {"a.jpg": 0, "b.jpg": 1}


def test_read_names_file_and_line_of_a_malformed_line(tmp_path: Path) -> None:
    (tmp_path / "image_ids.txt").write_text("a.jpg\nb.jpg")
    (tmp_path / "class_labels.txt").write_text("a.jpg,0\nb.jpg,one")
    with pytest.raises(DawsolError, match=r"class_labels.txt:2: expected"):
        read_split(tmp_path)


def test_a_valid_dataset_has_no_problems(dataset: Path) -> None:
    assert validate_dataset(dataset, num_classes=2) == []


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


CASES = [
    # (file under metadata/, old text, new text, expected "file:line: message" fragment)
    ("test/image_ids.txt", "test/c0/1.png", "test/c0/0.png", "image_ids.txt:2: duplicate image id test/c0/0.png"),
    ("val/class_labels.txt", "val/c1/1.png,1", "val/c1/1.png,1\nval/zz.png,0", "class_labels.txt:5: unknown image id"),
    (
        "val/class_labels.txt",
        "val/c0/1.png,0",
        "val/c0/1.png,0\nval/c0/1.png,0",
        "class_labels.txt:3: duplicate image id",
    ),
    ("train/class_labels.txt", "train/c1/0.png,1", "train/c1/0.png,2", "class_labels.txt:3: label 2 of train/c1/0.png"),
    ("train/class_labels.txt", "train/c1/0.png,1", "train/c1/0.png,-1", "class_labels.txt:3: label -1"),
    ("train/class_labels.txt", "train/c1/0.png,1\n", "", "image_ids.txt:3: train/c1/0.png has no label"),
    ("test/localization.txt", "test/c0/0.png,1,2,5,6", "test/c0/0.png,5,2,1,6", "localization.txt:1: box (5,2,1,6)"),
    ("test/localization.txt", "test/c0/0.png,1,2,5,6", "test/c0/0.png,1,7,5,6", "x1 < x0 or y1 < y0"),
    ("test/localization.txt", "test/c0/0.png,0,0,19,9", "test/c0/0.png,0,0,20,9", "lies outside the 20x10 image"),
    ("test/localization.txt", "test/c0/0.png,0,0,19,9", "test/c0/0.png,0,0,19,10", "lies outside the 20x10 image"),
    ("test/localization.txt", "test/c0/0.png,0,0,19,9", "test/c0/0.png,-1,0,19,9", "negative coordinate"),
    ("test/localization.txt", "test/c0/0.png,1,2,5,6", "test/nope.png,1,2,5,6", "localization.txt:1: unknown image id"),
    ("test/localization.txt", "test/c0/0.png,1,2,5,6", "test/c0/0.png,1,2,5", "localization.txt:1: expected"),
    ("val/image_sizes.txt", "val/c0/0.png,20,10\n", "", "box of val/c0/0.png but no size"),
    ("val/image_sizes.txt", "val/c0/0.png,20,10", "val/c0/0.png,0,10", "image_sizes.txt:1: non-positive size"),
    ("val/image_sizes.txt", "val/c0/0.png,20,10", "val/c0/0.png,20,10\nval/c0/0.png,20,10", "image_sizes.txt:2: dup"),
    ("val/image_sizes.txt", "val/c0/0.png,20,10", "val/c0/0.png,20,10\nval/q.png,2,2", "image_sizes.txt:2: unknown"),
    ("val/mask_localization.txt", "val/c0/0_m1.png,", "val/c0/0_m1.png,x.png", "mask_localization.txt:2: ignore mask"),
    ("val/mask_localization.txt", "val/c0/0_m1.png,", "val/c0/0_missing.png,", "mask file missing"),
    (
        "val/mask_localization.txt",
        "val/c0/0_ignore.png",
        "val/c0/0_gone.png",
        "mask_localization.txt:1: mask file missing",
    ),
    ("val/mask_localization.txt", "val/c0/0.png,", "val/c9/0.png,", "mask_localization.txt:1: unknown image id"),
]


@pytest.mark.parametrize(("name", "old", "new", "expected"), CASES)
def test_every_validation_error_names_file_and_line(
    dataset: Path, name: str, old: str, new: str, expected: str
) -> None:
    _edit(dataset / "metadata" / name, old, new)
    problems = [str(p) for p in validate_dataset(dataset, num_classes=2)]
    assert any(expected in p for p in problems), problems
    assert all(str(dataset) in p for p in problems)


def test_missing_image_and_mask_files_are_reported(dataset: Path) -> None:
    (dataset / "train/c0/1.png").unlink()
    (dataset / "test/c1/0_m0.png").unlink()
    problems = [str(p) for p in validate_dataset(dataset, num_classes=2)]
    assert any("train/image_ids.txt:2: image file missing" in p for p in problems), problems
    assert any("test/mask_localization.txt:" in p and "mask file missing" in p for p in problems), problems


def test_val_images_need_localization_and_splits_must_exist(dataset: Path) -> None:
    (dataset / "metadata/val/localization.txt").write_text("")
    (dataset / "metadata/val/mask_localization.txt").unlink()
    problems = [str(p) for p in validate_dataset(dataset, num_classes=2)]
    assert sum("has no box or mask" in p for p in problems) == 4
    (dataset / "metadata/test/class_labels.txt").unlink()
    assert any("test/class_labels.txt: missing file" in str(p) for p in validate_dataset(dataset))
    (absent,) = validate_dataset(dataset.parent / "absent")
    assert "dataset folder not found" in str(absent)


def test_masks_resolve_against_mask_root(dataset: Path, tmp_path: Path) -> None:
    assert validate_dataset(dataset, mask_root=tmp_path / "elsewhere")  # masks are not there
    assert validate_dataset(dataset, mask_root=dataset) == []


def test_proxy_ids_must_be_known_and_unique(dataset: Path) -> None:
    (dataset / "metadata/train/image_ids_proxy.txt").write_text("train/c0/0.png\ntrain/c0/0.png\ntrain/x.png")
    problems = [str(p) for p in validate_dataset(dataset, num_classes=2)]
    assert any("image_ids_proxy.txt:2: duplicate" in p for p in problems), problems
    assert any("image_ids_proxy.txt:3: unknown" in p for p in problems), problems


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dawsol", *args], capture_output=True, text=True, cwd=cwd)


def test_validate_command(dataset: Path, tmp_path: Path) -> None:
    ok = _cli("validate", str(dataset), "--num-classes", "2", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    _edit(dataset / "metadata/test/class_labels.txt", "test/c1/0.png,1", "test/c1/0.png,7")
    bad = _cli("validate", str(dataset), "--num-classes", "2", cwd=tmp_path)
    assert bad.returncode == 1
    assert "test/class_labels.txt:3: label 7 of test/c1/0.png out of range (0..1)" in bad.stderr
    assert "dawsol: error:" in bad.stderr and "Traceback" not in bad.stderr
