"""Ground truth at the evaluation size and the torch Datasets: shapes, rescaling, masks, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from data_fixtures import make_dataset, tiny_masks, write_png
from torch.utils.data import DataLoader

from dawsol.data.datasets import EvalDataset, TrainDataset, collate_eval, sample_per_class
from dawsol.data.groundtruth import load_mask, rescale_boxes
from dawsol.errors import DawsolError


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "tiny")


def test_rescale_boxes_truncates_like_the_reference() -> None:
    boxes = [(10, 20, 99, 149), (0, 0, 1, 1)]
    # by hand: 10*224/100 = 22.4, 20*224/150 = 29.87, 99*224/100 = 221.76, 149*224/150 = 222.51
    assert rescale_boxes(boxes, (100, 150), 224).tolist() == [[22, 29, 221, 222], [0, 0, 2, 1]]
    rng = np.random.default_rng(1)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(1, 700, 2))
        box = (int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(0, h)))
        expected = [int(box[0] * 224 / w), int(box[1] * 224 / h), int(box[2] * 224 / w), int(box[3] * 224 / h)]
        assert rescale_boxes([box], (w, h), 224).tolist() == [expected]
    empty = rescale_boxes([], (10, 10), 224)
    assert empty.shape == (0, 4) and empty.dtype == np.int64


def test_load_mask_is_get_mask(tmp_path: Path) -> None:
    first, second, ignore = tiny_masks()
    soft = first.copy()
    soft[soft > 0] = 1  # any non-zero pixel counts, as in the reference ('> 0.5' on 0-255 values)
    paths = []
    for name, mask in (("a.png", soft), ("b.png", second), ("ignore.png", ignore)):
        write_png(tmp_path / name, mask)
        paths.append(tmp_path / name)
    size = 37
    result = load_mask(paths[:2], paths[2], size)
    near = lambda m: cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST) > 0.5  # noqa: E731
    foreground = near(soft) | near(second)
    expected = foreground.astype(np.uint8) + 255 * (near(ignore) & ~foreground).astype(np.uint8)
    assert result.dtype == np.uint8 and result.shape == (size, size)
    np.testing.assert_array_equal(result, expected)
    assert set(np.unique(result)) == {0, 1, 255}
    assert (result == 1).sum() > 0 and (result == 255).sum() > 0
    no_ignore = load_mask(paths[:1], None, size)
    assert set(np.unique(no_ignore)) == {0, 1}
    with pytest.raises(DawsolError, match=r"missing\.png: mask missing"):
        load_mask([tmp_path / "missing.png"], None, size)


def test_train_items_and_reproducible_augmentation(dataset: Path) -> None:
    data = TrainDataset(dataset, image_size=8, resize_size=12)
    assert len(data) == 4 and data.labels == [0, 0, 1, 1]
    image, label = data[2]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and label == 1
    torch.manual_seed(3)
    first = torch.stack([data[0][0] for _ in range(6)])
    torch.manual_seed(3)
    again = torch.stack([data[0][0] for _ in range(6)])
    assert torch.equal(first, again)
    assert not all(torch.equal(first[0], crop) for crop in first[1:])  # crops and flips vary


def test_eval_items_rescale_boxes_and_load_masks(dataset: Path) -> None:
    data = EvalDataset(dataset, "test", image_size=16)
    item = data[0]
    assert item["image"].shape == (3, 16, 16)
    assert item["image_id"] == "test/c0/0.png" and item["label"] == 0
    # (1,2,5,6) and (0,0,19,9) in a 20x10 image at 16: x*16/20, y*16/10, truncated
    assert item["boxes"].dtype == np.int64
    assert item["boxes"].tolist() == [[0, 3, 4, 9], [0, 0, 15, 14]]
    assert item["mask"].shape == (16, 16) and set(np.unique(item["mask"])) == {0, 1, 255}
    train_items = EvalDataset(dataset, "train", image_size=16)
    assert train_items[0]["mask"] is None


def test_eval_without_boxes_and_with_a_subset(dataset: Path) -> None:
    val = dataset / "metadata/val"
    (val / "mask_localization.txt").rename(val / "localization.txt")  # a mask-only split, as OpenImages ships
    data = EvalDataset(dataset, "val", 16, image_ids=["val/c1/1.png"])
    assert len(data) == 1
    item = data[0]
    assert item["boxes"].shape == (0, 4) and item["mask"] is not None


def test_collate_eval(dataset: Path) -> None:
    loader = DataLoader(EvalDataset(dataset, "val", 16), batch_size=3, collate_fn=collate_eval)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 16, 16)
    assert batch["label"].tolist() == [0, 0, 1]
    assert batch["image_id"] == ["val/c0/0.png", "val/c0/1.png", "val/c1/0.png"]
    assert [b.shape for b in batch["boxes"]] == [(2, 4)] * 3
    assert [m.shape for m in batch["mask"]] == [(16, 16)] * 3


def test_missing_or_unreadable_image_names_id_and_path(dataset: Path) -> None:
    (dataset / "train/c0/1.png").unlink()
    (dataset / "train/c1/0.png").write_bytes(b"not a png")
    data = TrainDataset(dataset, image_size=8, resize_size=12)
    with pytest.raises(DawsolError, match=r"image train/c0/1\.png: .*train/c0/1\.png is missing"):
        data[1]
    with pytest.raises(DawsolError, match=r"image train/c1/0\.png: .*unreadable"):
        data[2]
    with pytest.raises(DawsolError, match="no such split"):
        EvalDataset(dataset, "nope", 16)


def test_sample_per_class_matches_seeded_np_random_choice() -> None:
    ids = [f"{c}/{k}.png" for c in range(3) for k in range(6)]
    labels = {i: int(i[0]) for i in ids}
    picked = sample_per_class(ids, labels, 2, seed=5)
    np.random.seed(5)
    expected = []
    for c in range(3):
        expected += [ids[i] for i in np.random.choice(np.arange(6 * c, 6 * c + 6), 2, replace=False)]
    assert picked == expected
    assert sample_per_class(ids, labels, 2, seed=5) == picked
    assert sample_per_class(ids, labels, 0, seed=5) == ids
    with pytest.raises(DawsolError, match="class 0 has only 6 images"):
        sample_per_class(ids, labels, 7, seed=0)
