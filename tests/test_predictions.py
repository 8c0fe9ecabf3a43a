"""The one predictions CSV dialect that `dawsol metrics` and `dawsol evaluate` share."""

from __future__ import annotations

from pathlib import Path

import pytest

from dawsol.errors import DawsolError
from dawsol.protocol.predictions import read_predictions

SPLITS = {"val": ["val/a.png", "val/b.png"], "test": ["test/a.png", "test/b.png", "test/c.png"]}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "preds.csv"
    path.write_text(text)
    return path


def test_header_blank_lines_and_both_splits(tmp_path):
    text = "image_id,predicted_label\nval/a.png,1\n\nval/b.png,0\ntest/a.png,2\ntest/b.png,2\ntest/c.png,-1\n"
    path = _write(tmp_path, text)
    assert read_predictions(path, SPLITS) == {
        "val": {"val/a.png": 1, "val/b.png": 0},
        "test": {"test/a.png": 2, "test/b.png": 2, "test/c.png": -1},
    }


def test_a_file_of_one_split_covers_that_split_alone(tmp_path):
    path = _write(tmp_path, "test/a.png,0\ntest/b.png,1\ntest/c.png,1\n")
    assert read_predictions(path, SPLITS) == {"test": {"test/a.png": 0, "test/b.png": 1, "test/c.png": 1}}
    assert read_predictions(path, {"test": SPLITS["test"]}) == read_predictions(path, SPLITS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "test/a.png,0\ntest/b.png,1\n",
            "preds.csv: no prediction for image 'test/c.png' of the test split (1 of 3 missing)",
        ),
        ("test/a.png,0\ntest/z.png,1\n", "preds.csv:2: image 'test/z.png' is not in the split"),
        ("test/a.png,0\ntest/a.png,1\n", "preds.csv:2: a second prediction for image 'test/a.png'"),
        ("test/a.png,0\ntest/b.png,one\n", "preds.csv:2: expected 'image_id,predicted_class'"),
        ("", "no prediction for image 'val/a.png' of the val split"),
    ],
)
def test_bad_files_are_one_line_errors_naming_file_and_line(tmp_path, text, message):
    with pytest.raises(DawsolError) as error:
        read_predictions(_write(tmp_path, text), SPLITS)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_header_is_only_a_first_line(tmp_path):
    with pytest.raises(DawsolError, match=r"preds\.csv:2: expected"):
        read_predictions(_write(tmp_path, "test/a.png,0\nimage_id,label\n"), SPLITS)


def test_a_file_of_the_whole_split_serves_a_sampled_subset(tmp_path):
    path = _write(tmp_path, "val/a.png,1\nval/b.png,0\n")
    assert read_predictions(path, SPLITS, {"val": ["val/b.png"], "test": SPLITS["test"]}) == {"val": {"val/b.png": 0}}
    with pytest.raises(DawsolError, match=r"no prediction for image 'val/b\.png' of the val split"):
        read_predictions(_write(tmp_path, "val/a.png,1\n"), SPLITS, {"val": ["val/b.png"], "test": SPLITS["test"]})
