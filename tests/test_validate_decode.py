"""`dawsol validate` decodes every file, and EvalDataset refuses images and masks of the wrong size (issue 15)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import HEIGHT, WIDTH, make_dataset, write_png
from PIL import Image

from dawsol.cli import main
from dawsol.data.datasets import EvalDataset
from dawsol.data.metadata import SplitMetadata, read_split, validate_dataset, write_split
from dawsol.errors import DawsolError


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "tiny")


def _validate(dataset: Path, capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str, str]:
    """``dawsol validate`` in this process (so that monkeypatches apply): exit code, stdout, stderr."""
    code = main(["validate", str(dataset), "--num-classes", "2", "--params", str(dataset / "none.yaml"), *options])
    out, err = capsys.readouterr()
    return code, out, err


def _noise(width: int, height: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _text_as_png(dataset: Path) -> None:
    (dataset / "train/c0/0.png").write_text("<html>not found</html>")


def _truncated_png(dataset: Path) -> None:
    path = dataset / "test/c1/1.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resized_image(dataset: Path) -> None:
    write_png(dataset / "val/c0/1.png", _noise(30, 15))


def _wrong_size_mask(dataset: Path) -> None:
    write_png(dataset / "test/c0/0_m1.png", np.zeros((10, 10), np.uint8))  # square, on a 20x10 image


def _empty_val_split(dataset: Path) -> None:
    write_split(dataset / "metadata/val", SplitMetadata(image_ids=[], labels={}))


def _not_utf8(dataset: Path) -> None:
    path = dataset / "metadata/train/class_labels.txt"
    path.write_bytes(path.read_bytes().replace(b"train/c1/0.png", b"train/c1/\xff.png"))


# (corruption, expected "file:line: message" fragment, the file it must name)
CORRUPTIONS: list[tuple[Callable[[Path], None], str, str]] = [
    (_text_as_png, "train/image_ids.txt:1: image", "train/c0/0.png unreadable: cannot identify image file"),
    (_truncated_png, "test/image_ids.txt:4: image", "test/c1/1.png unreadable: image file is truncated"),
    (_resized_image, "val/image_sizes.txt:2: size 20x10 of val/c0/1.png", "val/c0/1.png is 30x15"),
    (_wrong_size_mask, "test/mask_localization.txt:2: mask", "0_m1.png is 10x10 but image test/c0/0.png is 20x10"),
    (_empty_val_split, "val/image_ids.txt: no images", "the val split is empty"),
    (_not_utf8, "train/class_labels.txt:3: not UTF-8", "byte 0xff at column 10"),
]


def test_a_clean_dataset_still_passes(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_dataset(dataset, num_classes=2, decode=True, workers=2) == []
    for options in ([], ["--workers", "2"], ["--fast", "--workers", "1"]):
        code, out, err = _validate(dataset, capsys, *options)
        assert code == 0, err
        assert out.startswith(f"{dataset}: valid")


@pytest.mark.parametrize(("corrupt", "where", "what"), CORRUPTIONS, ids=[c.__name__[1:] for c, *_ in CORRUPTIONS])
def test_validate_names_the_file_of_each_corruption(
    dataset: Path, capsys: pytest.CaptureFixture[str], corrupt: Callable[[Path], None], where: str, what: str
) -> None:
    corrupt(dataset)
    code, _, err = _validate(dataset, capsys)
    assert code == 1
    assert any(where in line and what in line for line in err.splitlines()), err
    assert "dawsol: error:" in err and "Traceback" not in err


def test_a_decompression_bomb_is_reported_not_raised(
    dataset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_png(dataset / "train/c1/1.png", _noise(2 * WIDTH, 2 * HEIGHT))
    sizes = dataset / "metadata/train/image_sizes.txt"
    sizes.write_text(sizes.read_text().replace("train/c1/1.png,20,10", "train/c1/1.png,40,20"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", WIDTH * HEIGHT)  # a bomb is over twice this: 40x20 only
    for options in ([], ["--fast"]):  # the check is in Image.open, so headers suffice
        code, _, err = _validate(dataset, capsys, *options)
        assert code == 1
        (line,) = [line for line in err.splitlines() if "decompression bomb" in line]
        assert "train/image_ids.txt:4: image" in line and "train/c1/1.png unreadable" in line
    with pytest.raises(DawsolError, match=r"image train/c1/1.png: .*train/c1/1.png is unreadable \(Image size"):
        EvalDataset(dataset, "train", 16)[3]


def test_fast_mode_reads_headers_but_not_pixels(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _truncated_png(dataset)
    code, out, err = _validate(dataset, capsys, "--fast")
    assert code == 0, err
    assert "headers only" in out
    _resized_image(dataset)
    assert any("val/c0/1.png is 30x15" in str(p) for p in validate_dataset(dataset, num_classes=2))


def test_non_utf8_metadata_is_a_dawsol_error_when_read(dataset: Path) -> None:
    _not_utf8(dataset)
    with pytest.raises(DawsolError, match=r"train/class_labels.txt:3: not UTF-8 \(byte 0xff at column 10\)"):
        read_split(dataset / "metadata/train")


def test_eval_dataset_refuses_an_image_whose_size_disagrees(dataset: Path) -> None:
    _resized_image(dataset)
    data = EvalDataset(dataset, "val", 16)
    data[0]  # the others are fine
    with pytest.raises(DawsolError) as error:
        data[1]
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"image val/c0/1.png: {dataset / 'val/c0/1.png'} is 30x15 but ")
    assert f"{dataset / 'metadata/val/image_sizes.txt'} says 20x10" in message


def test_eval_dataset_refuses_a_mask_of_another_size(dataset: Path) -> None:
    _wrong_size_mask(dataset)
    data = EvalDataset(dataset, "test", 16)
    data[1]  # test/c0/1.png's masks are fine
    with pytest.raises(DawsolError) as error:
        data[0]
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{dataset / 'test/c0/0_m1.png'}: mask is 10x10 but its image is 20x10")
    # a mask stored at another resolution of the same shape is the protocol's business (it resizes both)
    write_png(dataset / "test/c0/0_m1.png", np.zeros((5, 10), np.uint8))
    assert data[0]["mask"].shape == (16, 16)
