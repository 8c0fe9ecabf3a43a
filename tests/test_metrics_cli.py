"""``dawsol metrics`` and the standalone evaluator on small datasets written in tmp_path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from dawsol.cli import main
from dawsol.data.metadata import SplitMetadata, write_split
from dawsol.errors import DawsolError
from dawsol.protocol.evaluator import build_tasks, evaluate_split

SIZE = 32


def _dataset(root: Path, *, with_boxes: bool = True, with_masks: bool = True, empty_masks: bool = False) -> Path:
    """Four images of 40 x 20 px, each with one or two objects, boxes and/or masks; returns the split dir."""
    ids = [f"test/{k}.png" for k in range(4)]
    boxes = {
        ids[0]: [(4, 2, 20, 12)],
        ids[1]: [(10, 5, 39, 19)],
        ids[2]: [(0, 0, 9, 9), (20, 8, 35, 18)],
        ids[3]: [(15, 4, 30, 15)],
    }
    meta = SplitMetadata(image_ids=ids, labels={i: k % 2 for k, i in enumerate(ids)}, sizes={i: (40, 20) for i in ids})
    if with_boxes:
        meta.boxes = boxes
    if with_masks:
        (root / "masks").mkdir(parents=True, exist_ok=True)
        for k, image_id in enumerate(ids):
            for j, (x0, y0, x1, y1) in enumerate(boxes[image_id]):
                mask = np.zeros((20, 40), dtype=np.uint8)
                if not empty_masks:
                    mask[y0 + 1 : y1, x0 + 1 : x1] = 255
                cv2.imwrite(str(root / "masks" / f"{k}_m{j}.png"), mask)
                meta.masks.setdefault(image_id, []).append(f"masks/{k}_m{j}.png")
            ignore = np.zeros((20, 40), dtype=np.uint8)
            ignore[0, :] = 255
            cv2.imwrite(str(root / "masks" / f"{k}_ignore.png"), ignore)
            meta.ignore_masks[image_id] = f"masks/{k}_ignore.png"
    split = root / "metadata" / "test"
    split.mkdir(parents=True)
    write_split(split, meta)
    return split


def _cams(root: Path, split: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cams = root / "cams"
    for image_id in split.joinpath("image_ids.txt").read_text().splitlines():
        path = cams / f"{image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rng.random((7, 7)).astype(np.float32))
    return cams


def _metrics(tmp_path: Path, *args: str) -> tuple[int, dict | None]:
    out = tmp_path / "out" / "metrics.json"
    code = main(["metrics", "-q", *args, "--size", str(SIZE), "--out", str(out)])
    return code, json.loads(out.read_text()) if code == 0 else None


def test_oracle_is_perfect_on_boxes_and_masks(tmp_path):
    split = _dataset(tmp_path)
    code, metrics = _metrics(tmp_path, "--metadata", str(split), "--baseline", "oracle")
    assert code == 0
    assert metrics["num_images"] == 4 and metrics["cam_curve_interval"] == 0.001
    assert metrics["MaxBoxAccV2"] == 100.0 and metrics["MaxBoxAcc"] == 100.0 and metrics["GT-known Loc"] == 100.0
    assert metrics["PxAP"] == 100.0 and metrics["pIoU"] == 100.0 and metrics["Top-1 Loc"] is None
    with (tmp_path / "out" / "metrics.curves.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["split", "threshold", "BoxAcc_30", "BoxAcc_50", "BoxAcc_70", "precision", "recall", "IoU"]
    assert len(rows) == 1001 and rows[1][:2] == ["test", "0.0"] and rows[2][1] == "0.001"


def test_center_baseline_and_cams_with_predictions(tmp_path):
    split = _dataset(tmp_path)
    code, center = _metrics(tmp_path, "--metadata", str(split), "--baseline", "center", "--cam-curve-interval", "0.01")
    assert code == 0 and 0 < center["PxAP"] < 100 and center["MaxBoxAccV2"] < 100
    cams = _cams(tmp_path, split)
    predictions = tmp_path / "preds.csv"
    predictions.write_text("test/0.png,0\ntest/1.png,0\ntest/2.png,0\ntest/3.png,1\n")  # 3 of 4 right
    args = ["--metadata", str(split), "--cams", str(cams), "--predictions", str(predictions)]
    code, one = _metrics(tmp_path, *args)
    assert code == 0 and one["Top-1 Loc"] is not None and one["Top-1 Loc"] <= one["GT-known Loc"]
    code, two = _metrics(tmp_path, *args, "--workers", "2")
    assert code == 0 and two == one  # sharded over processes, merged exactly


def test_mask_only_split_has_null_box_metrics(tmp_path):
    split = _dataset(tmp_path, with_boxes=False)
    assert not (split / "mask_localization.txt").exists()
    code, metrics = _metrics(tmp_path, "--metadata", str(split), "--baseline", "oracle", "--iou-thresholds", "50")
    assert code == 0 and metrics["PxAP"] == 100.0
    assert metrics["MaxBoxAccV2"] is None and metrics["BoxAcc"] == {"50": None}


def test_mask_root_option(tmp_path, capsys):
    split = _dataset(tmp_path / "data")
    (tmp_path / "root").mkdir()
    (tmp_path / "data" / "masks").rename(tmp_path / "root" / "masks")
    code, _ = _metrics(tmp_path, "--metadata", str(split), "--baseline", "oracle")
    assert code == 1 and "0_m0.png" in capsys.readouterr().err  # not under the dataset folder any more
    root = str(tmp_path / "root")
    code, metrics = _metrics(tmp_path, "--metadata", str(split), "--baseline", "oracle", "--mask-root", root)
    assert code == 0 and metrics["PxAP"] == 100.0


def test_gt_boxes_are_rescaled_with_truncation(tmp_path):
    split = _dataset(tmp_path)
    tasks = build_tasks(split, None, mask_root=None, predictions=None, size=224).tasks
    # (4, 2, 20, 12) in 40 x 20: int(4 * 224 / 40) = 22, int(2 * 224 / 20) = 22, int(20 * 5.6) = 112,
    # int(12 * 11.2) = int(134.4) = 134.
    assert tasks[0].boxes.tolist() == [[22, 22, 112, 134]]
    # (10, 5, 39, 19): 56, 56, int(218.4) = 218, int(212.8) = 212.
    assert tasks[1].boxes.tolist() == [[56, 56, 218, 212]]


@pytest.mark.parametrize(
    ("cam", "message"),
    [
        (np.array([[0.0, np.nan], [1.0, 0.5]]), "NaN or inf"),
        (np.array([[0.0, np.inf], [1.0, 0.5]]), "NaN or inf"),
        (np.zeros((2, 3, 3)), "2-D"),
    ],
)
def test_bad_cam_names_the_image_and_file(tmp_path, capsys, cam, message):
    split = _dataset(tmp_path)
    cams = _cams(tmp_path, split)
    np.save(cams / "test" / "2.png.npy", cam)
    code, _ = _metrics(tmp_path, "--metadata", str(split), "--cams", str(cams))
    error = capsys.readouterr().err
    assert code == 1 and message in error and "test/2.png" in error and "2.png.npy" in error
    assert "Traceback" not in error


def test_bad_cam_in_a_worker_process_is_reported_the_same(tmp_path, capsys):
    split = _dataset(tmp_path)
    cams = _cams(tmp_path, split)
    np.save(cams / "test" / "3.png.npy", np.full((4, 4), np.nan))
    code, _ = _metrics(tmp_path, "--metadata", str(split), "--cams", str(cams), "--workers", "2")
    assert code == 1 and "test/3.png" in capsys.readouterr().err


def test_missing_cam(tmp_path, capsys):
    split = _dataset(tmp_path)
    cams = _cams(tmp_path, split)
    (cams / "test" / "1.png.npy").unlink()
    code, _ = _metrics(tmp_path, "--metadata", str(split), "--cams", str(cams))
    error = capsys.readouterr().err
    assert code == 1 and "no CAM for image 'test/1.png'" in error and "1.png.npy" in error


def test_cams_of_images_outside_the_split_are_named_in_a_warning(tmp_path, caplog):
    split = _dataset(tmp_path)
    cams = _cams(tmp_path, split)
    np.save(cams / "test" / "notanid.png.npy", np.zeros((7, 7), np.float32))
    np.save(cams / "test" / "0.png.extra.npy", np.zeros((7, 7), np.float32))
    with caplog.at_level("WARNING", logger="dawsol.protocol.evaluator"):
        code, metrics = _metrics(tmp_path, "--metadata", str(split), "--cams", str(cams))
    assert code == 0 and metrics["num_images"] == 4
    assert "2 CAM file(s)" in caplog.text and "0.png.extra.npy" in caplog.text and "image_ids.txt" in caplog.text


def test_a_cam_folder_of_the_split_alone_warns_about_nothing(tmp_path, caplog):
    split = _dataset(tmp_path)
    with caplog.at_level("WARNING", logger="dawsol.protocol.evaluator"):
        assert _metrics(tmp_path, "--metadata", str(split), "--cams", str(_cams(tmp_path, split)))[0] == 0
    assert "CAM file" not in caplog.text


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("test/0.png,0\ntest/1.png,0\ntest/2.png,0\ntest/3.png,1\ntest/9.png,1\n", "'test/9.png' is not in the split"),
        ("test/0.png,0\ntest/1.png,0\ntest/3.png,1\n", "no prediction for image 'test/2.png'"),
        ("test/0.png,zero\n", "expected 'image_id,predicted_class'"),
    ],
)
def test_bad_predictions(tmp_path, capsys, lines, message):
    split = _dataset(tmp_path)
    predictions = tmp_path / "preds.csv"
    predictions.write_text(lines)
    code, _ = _metrics(
        tmp_path, "--metadata", str(split), "--cams", str(_cams(tmp_path, split)), "--predictions", str(predictions)
    )
    error = capsys.readouterr().err
    assert code == 1 and message in error and "preds.csv" in error


def test_split_without_foreground_pixels(tmp_path):
    split = _dataset(tmp_path, empty_masks=True)
    with pytest.raises(DawsolError, match=r"mask_localization\.txt: no foreground pixel"):
        evaluate_split(split, baseline="oracle", size=SIZE)


def test_split_without_localization_labels(tmp_path):
    split = _dataset(tmp_path, with_boxes=False, with_masks=False)
    with pytest.raises(DawsolError, match="has no box or mask"):
        evaluate_split(split, baseline="center", size=SIZE)


def test_cams_or_baseline_not_both(tmp_path):
    split = _dataset(tmp_path)
    with pytest.raises(DawsolError, match="either CAMs"):
        evaluate_split(split, tmp_path, baseline="oracle")


def test_random_baseline_is_seeded_per_image_and_independent_of_workers(tmp_path):
    split = _dataset(tmp_path)
    code, one = _metrics(tmp_path, "--metadata", str(split), "--baseline", "random")
    assert code == 0 and 0 < one["PxAP"] < 100 and one["MaxBoxAccV2"] < 100
    code, two = _metrics(tmp_path, "--metadata", str(split), "--baseline", "random", "--workers", "2")
    assert code == 0 and two == one
    code, center = _metrics(tmp_path, "--metadata", str(split), "--baseline", "center")
    assert center["PxAP"] != one["PxAP"]
