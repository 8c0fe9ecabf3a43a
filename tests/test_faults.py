"""Faults named in one line: a bad image read by a DataLoader worker."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_fixtures import prepare_tiny_data

from dawsol.data.datasets import EvalDataset, ItemError, TrainDataset, collate_eval
from dawsol.errors import DawsolError


@pytest.fixture(scope="module")
def damaged_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic benchmark with its first train and test images truncated to 100 bytes."""
    data = prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")
    for image in ("train/000/00000.png", "test/000/00000.png"):
        path = data / image
        path.write_bytes(path.read_bytes()[:100])
    return data


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_bad_image_in_a_dataloader_worker_is_one_line_naming_it(damaged_data: Path, split: str) -> None:
    if split == "train":
        dataset = TrainDataset(damaged_data, image_size=32, resize_size=36)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1)
    else:
        dataset = EvalDataset(damaged_data, "test", 32)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=collate_eval)
    with pytest.raises(DawsolError) as caught:
        next(iter(loader))
    message = str(caught.value)
    assert isinstance(caught.value, ItemError)
    assert message.startswith(f"image {split}/000/00000.png: {damaged_data / split / '000/00000.png'} is unreadable")
    assert "\n" not in message and "DataLoader worker" not in message and "Traceback" not in message


def test_an_item_error_outside_a_worker_keeps_its_message() -> None:
    text = "image a.png: data/a.png is missing; re-run `dawsol prepare`"
    assert str(ItemError(text)) == text
