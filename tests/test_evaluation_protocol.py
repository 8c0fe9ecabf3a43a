"""The WSOL protocol's quirks, each pinned by a hand-built case whose answer follows from
docs/protocol.md section 2 (worked out in the comments, not by running the code)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dawsol.protocol import (
    BoxAccumulator,
    MaskAccumulator,
    best_ious,
    cam_thresholds,
    metrics_dict,
    multiple_iou,
    normalize_scoremap,
    prepare_scoremap,
    scoremap_boxes,
)


def _boxes_at(scoremap: np.ndarray, tau: float, multi_contour: bool = True) -> list[list[int]]:
    return sorted(scoremap_boxes(scoremap, [tau], multi_contour)[0].tolist())


# -- thresholds and score maps ------------------------------------------------------------


def test_thresholds_are_np_arange_with_its_float_error():
    coarse, fine = cam_thresholds(0.01), cam_thresholds(0.001)
    assert len(coarse) == 100 and len(fine) == 1000  # 1.0 excluded
    # start + i * step, not i / 100: e.g. 35 * 0.01 is 0.35000000000000003 and 70 * 0.01 is 0.7000000000000001
    assert coarse[35] == 0.35000000000000003 and coarse[70] == 0.7000000000000001
    assert fine[9] == 0.009000000000000001
    assert coarse == [float(t) for t in np.arange(0, 1, 0.01)]
    assert fine == [float(t) for t in np.arange(0, 1, 0.001)]


def test_normalize_subtracts_min_then_divides_by_new_max():
    cam = np.array([[2.0, 4.0], [6.0, 10.0]])
    # (cam - 2) / 8
    np.testing.assert_array_equal(normalize_scoremap(cam), [[0.0, 0.25], [0.5, 1.0]])
    assert cam[0, 0] == 2.0  # the input is left alone


@pytest.mark.parametrize("cam", [np.full((3, 3), 5.0), np.array([[1.0, np.nan], [0.0, 2.0]])])
def test_normalize_constant_or_nan_map_is_all_zero(cam):
    result = normalize_scoremap(cam)
    assert result.dtype == np.float64 and not result.any()


def test_prepare_scoremap_is_float64_bicubic_then_normalised():
    cam = np.arange(12, dtype=np.float32).reshape(3, 4) ** 2
    expected = cv2.resize(cam.astype(np.float64), (8, 8), interpolation=cv2.INTER_CUBIC)
    expected = (expected - expected.min()) / (expected - expected.min()).max()
    result = prepare_scoremap(cam, 8)
    assert result.dtype == np.float64 and result.shape == (8, 8)
    np.testing.assert_array_equal(result, expected)


# -- boxes from a score map -----------------------------------------------------------------


def test_uint8_truncation():
    scoremap = np.zeros((10, 10))
    scoremap[2, 2] = 1.0  # uint8 255
    scoremap[7, 7] = 0.999  # 0.999 * 255 = 254.7 truncates to 254 (rounding would give 255)
    # tau = 0.997: int(0.997 * 255) = int(254.2) = 254, so only the 255 pixel is > 254.
    assert _boxes_at(scoremap, 0.997) == [[2, 2, 3, 3]]
    # tau = 0.99: int(252.45) = 252, both pixels are > 252.
    assert _boxes_at(scoremap, 0.99) == [[2, 2, 3, 3], [7, 7, 8, 8]]


def test_threshold_is_int_of_tau_times_uint8_max_with_strict_greater():
    scoremap = np.zeros((12, 12))
    scoremap[1:3, 1:3] = 0.5  # uint8 127: the map's maximum
    scoremap[6:9, 6:9] = 64.5 / 255  # uint8 64
    scoremap[10, 10] = 63.5 / 255  # uint8 63
    # tau = 0.5: int(0.5 * 127) = int(63.5) = 63 (relative to the uint8 max 127, not 255);
    # 64 > 63 stays, 63 > 63 does not (strict).
    assert _boxes_at(scoremap, 0.5) == [[1, 1, 3, 3], [6, 6, 9, 9]]
    # tau = 0.49: int(62.23) = 62, and now 63 > 62.
    assert _boxes_at(scoremap, 0.49) == [[1, 1, 3, 3], [6, 6, 9, 9], [10, 10, 11, 11]]


def test_boxes_use_exclusive_corners_clipped_at_w_minus_1():
    scoremap = np.zeros((10, 10))
    scoremap[1:3, 1:4] = 1.0  # x 1..3, y 1..2: boundingRect (1, 1, 3, 2) -> (1, 1, 1+3, 1+2)
    scoremap[7:10, 6:10] = 1.0  # x 6..9, y 7..9: (6, 7, 4, 3) -> x1 = min(10, 9), y1 = min(10, 9)
    assert _boxes_at(scoremap, 0.5) == [[1, 1, 4, 3], [6, 7, 9, 9]]


def test_hole_contours_are_candidate_boxes():
    scoremap = np.zeros((12, 12))
    scoremap[2:9, 2:9] = 1.0  # a 7x7 square, x and y 2..8
    scoremap[4:7, 4:7] = 0.0  # with a 3x3 hole, 4..6
    # Outer border: (2, 2, 7, 7) -> [2, 2, 9, 9]. Hole border: the foreground pixels next to the
    # hole, 3..7: (3, 3, 5, 5) -> [3, 3, 8, 8].
    assert _boxes_at(scoremap, 0.5) == [[2, 2, 9, 9], [3, 3, 8, 8]]
    assert _boxes_at(scoremap, 0.5, multi_contour=False) == [[2, 2, 9, 9]]  # the larger area


def test_all_zero_map_gives_the_zero_box_at_every_threshold():
    boxes = scoremap_boxes(np.zeros((8, 8)), cam_thresholds(0.01), multi_contour=True)
    assert len(boxes) == 100 and all(b.tolist() == [[0, 0, 0, 0]] for b in boxes)
    # IoU of [0,0,0,0] with GT [0,0,0,0] is 1/1; with [0,0,1,1] it is 1/4.
    multi, largest = best_ious(np.zeros((8, 8)), np.array([[0, 0, 1, 1], [0, 0, 0, 0]]), [0.0, 0.5])
    assert multi.tolist() == [1.0, 1.0] and largest.tolist() == [1.0, 1.0]
    multi, _ = best_ious(np.zeros((8, 8)), np.array([[0, 0, 1, 1]]), [0.0])
    assert multi.tolist() == [0.25]


def test_above_the_peak_the_mask_is_empty_and_gives_the_zero_box():
    scoremap = np.zeros((6, 6))
    scoremap[2:4, 2:4] = 1.0
    # The map's only values are 0 and 255, and every threshold is below 255: always the square.
    assert all(b.tolist() == [[2, 2, 4, 4]] for b in scoremap_boxes(scoremap, cam_thresholds(0.01)))


def test_v1_keeps_the_largest_contour_by_area_not_by_box():
    scoremap = np.zeros((20, 20))
    scoremap[1, 1:15] = 1.0  # a 1-pixel line: area 0, box [1, 1, 15, 2]
    scoremap[1:15, 1] = 1.0  # an L with it: still a thin polygon of area 0
    scoremap[10:14, 10:14] = 1.0  # a 4x4 square: area 9, box [10, 10, 14, 14]
    assert _boxes_at(scoremap, 0.5, multi_contour=False) == [[10, 10, 14, 14]]
    assert _boxes_at(scoremap, 0.5) == [[1, 1, 15, 15], [10, 10, 14, 14]]


def test_v1_area_ties_go_to_the_first_contour_in_cv2_order():
    scoremap = np.zeros((12, 12))
    scoremap[1:4, 1:4] = 1.0
    scoremap[7:10, 6:9] = 1.0  # the same area
    contours = cv2.findContours((scoremap * 255).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))  # Python's max: first on ties
    assert _boxes_at(scoremap, 0.5, multi_contour=False) == [[x, y, x + w, y + h]]


# -- IoU ------------------------------------------------------------------------------------


def test_iou_is_plus_one_inclusive():
    # [0,0,9,9] has 10 x 10 = 100 pixels; [0,0,4,9] has 50, all inside: 50 / 100.
    assert multiple_iou(np.array([[0, 0, 9, 9]]), np.array([[0, 0, 4, 9]])).tolist() == [[0.5]]
    # [0,0,1,1] (4 px) and [1,1,2,2] (4 px) share 1 pixel: 1 / 7.
    assert multiple_iou(np.array([[0, 0, 1, 1]]), np.array([[1, 1, 2, 2]]))[0, 0] == 1 / 7
    assert multiple_iou(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]])).tolist() == [[1.0]]
    assert multiple_iou(np.array([[0, 0, 1, 1]]), np.array([[3, 3, 4, 4]])).tolist() == [[0.0]]


@pytest.mark.parametrize("bad", [[[-1, 0, 3, 3]], [[4, 0, 3, 3]], [[0, 5, 3, 3]]])
def test_iou_rejects_boxes_against_the_convention(bad):
    with pytest.raises(ValueError):
        multiple_iou(np.array(bad), np.array([[0, 0, 1, 1]]))


def test_several_gt_boxes_any_match_counts():
    scoremap = np.zeros((20, 20))
    scoremap[12:16, 12:16] = 1.0  # predicted [12, 12, 16, 16]
    gt = np.array([[0, 0, 5, 5], [12, 12, 16, 16]])  # the second one matches exactly
    multi, largest = best_ious(scoremap, gt, [0.5])
    assert multi.tolist() == [1.0] and largest.tolist() == [1.0]


# -- BoxAccumulator ---------------------------------------------------------------------------


def _two_image_box_accumulator(interval: float) -> BoxAccumulator:
    acc = BoxAccumulator([30, 50, 70], interval)
    # Image 1 (class predicted right): a big 10x10 blob and a small 3x3 blob matching the GT.
    # Binary map, so every threshold gives both blobs. Every contour: IoU 1. Largest only: 0.
    first = np.zeros((20, 20))
    first[1:11, 1:11] = 1.0
    first[14:17, 14:17] = 1.0
    acc.accumulate(first, np.array([[14, 14, 17, 17]]), correct_class=True)
    # Image 2 (class predicted wrong): inner 5x5 at 1.0 (x 5..9) in an outer 9x9 at 0.5 (uint8 127,
    # x 3..11). int(tau * 255) <= 126: outer box [3, 3, 12, 12], IoU with the GT [5, 5, 10, 10]
    # = 36 / 100. int(tau * 255) >= 127: inner box, IoU 1.
    second = np.zeros((16, 16))
    second[3:12, 3:12] = 0.5
    second[5:10, 5:10] = 1.0
    acc.accumulate(second, np.array([[5, 5, 10, 10]]), correct_class=False)
    return acc


@pytest.mark.parametrize(("interval", "first_high"), [(0.01, 50), (0.001, 499)])
def test_box_metrics_by_hand(interval, first_high):
    result = _two_image_box_accumulator(interval).compute()
    taus = np.asarray(cam_thresholds(interval))
    # 0.49 * 255 = 124.95 and 0.50 * 255 = 127.5; 0.498 * 255 = 126.99 and 0.499 * 255 = 127.245.
    assert int(taus[first_high - 1] * 255) < 127 == int(taus[first_high] * 255)
    high = np.arange(len(taus)) >= first_high
    tau_high = taus[first_high]
    np.testing.assert_array_equal(result["curves"][30], np.full(len(taus), 100.0))
    np.testing.assert_array_equal(result["curves"][50], np.where(high, 100.0, 50.0))
    assert result["BoxAcc"] == {30: 100.0, 50: 100.0, 70: 100.0}
    assert result["best_threshold"] == {30: 0.0, 50: tau_high, 70: tau_high}  # the first maximum
    assert result["MaxBoxAccV2"] == 100.0
    assert result["GT-known Loc"] == 100.0 and result["chosen_threshold"]["GT-known Loc"] == tau_high
    # v1: image 1's largest contour misses, image 2 hits from tau_high on: 50 %.
    assert result["MaxBoxAcc"] == 50.0 and result["chosen_threshold"]["MaxBoxAcc"] == tau_high
    # Top-1: only image 1 counts, at every tau, over both images: 50 %, at its own tau 0.0.
    assert result["Top-1 Loc"] == 50.0 and result["chosen_threshold"]["Top-1 Loc"] == 0.0


def test_chosen_threshold_is_the_np_arange_float():
    acc = BoxAccumulator([50], 0.01)
    scoremap = np.zeros((16, 16))
    scoremap[2:14, 2:14] = 88.5 / 255  # uint8 88
    scoremap[5:10, 5:10] = 1.0
    # tau = 0.34: int(86.7) = 86 < 88, outer box; tau = 0.35000000000000003: int(89.25) = 89, inner.
    acc.accumulate(scoremap, np.array([[5, 5, 10, 10]]))
    assert acc.compute()["best_threshold"][50] == 0.35000000000000003


def test_multi_contour_false_scores_the_largest_contour():
    acc = BoxAccumulator([50], 0.01, multi_contour=False)
    scoremap = np.zeros((20, 20))
    scoremap[1:11, 1:11] = 1.0
    scoremap[14:17, 14:17] = 1.0
    acc.accumulate(scoremap, np.array([[14, 14, 17, 17]]))
    assert acc.compute()["BoxAcc"][50] == 0.0


def test_top1_is_none_without_predictions():
    acc = BoxAccumulator([30, 50, 70], 0.01)
    acc.accumulate(np.zeros((8, 8)), np.array([[0, 0, 0, 0]]))
    assert acc.compute()["Top-1 Loc"] is None


def test_box_merge_is_exact():
    whole = _two_image_box_accumulator(0.001)
    rng = np.random.default_rng(0)
    maps = [prepare_scoremap(rng.random((7, 7)), 32) for _ in range(4)]
    gts = [np.array([[3, 4, 20, 25]]), np.array([[0, 0, 31, 31], [10, 10, 12, 12]]), np.array([[5, 5, 6, 6]])] * 2
    shards = [BoxAccumulator([30, 50, 70], 0.001) for _ in range(2)]
    for k, (scoremap, gt) in enumerate(zip(maps, gts, strict=False)):
        whole.accumulate(scoremap, gt, correct_class=k % 2 == 0)
        shards[k % 2].accumulate(scoremap, gt, correct_class=k % 2 == 0)
    merged = _two_image_box_accumulator(0.001)
    for shard in shards:
        merged.merge(shard)
    np.testing.assert_array_equal(merged.num_correct, whole.num_correct)
    assert metrics_dict(merged, None) == metrics_dict(whole, None)


def test_merge_refuses_other_settings():
    with pytest.raises(ValueError):
        BoxAccumulator([30, 50, 70], 0.01).merge(BoxAccumulator([30, 50, 70], 0.001))
    with pytest.raises(ValueError):
        MaskAccumulator(0.01).merge(MaskAccumulator(0.001))


def test_accumulate_checks_the_score_map():
    acc = BoxAccumulator([50], 0.01)
    with pytest.raises(ValueError, match="float64"):
        acc.accumulate(np.zeros((4, 4), dtype=np.float32), np.array([[0, 0, 1, 1]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        acc.accumulate(np.full((4, 4), 1.5), np.array([[0, 0, 1, 1]]))


# -- MaskAccumulator ----------------------------------------------------------------------------


def _mask_case() -> MaskAccumulator:
    # Interval 0.25: thresholds [0, .25, .5, .75], edges [0, .25, .5, .75, 1, 2, 3].
    acc = MaskAccumulator(0.25)
    scores = np.array([[1.0, 0.6, 0.3, 0.8, 0.9]])
    labels = np.array([[1, 1, 0, 0, 255]], dtype=np.uint8)  # the 0.9 pixel is ignored
    acc.accumulate(scores, labels)
    return acc


def test_pxap_histograms_by_hand():
    acc = _mask_case()
    # fg 1.0 -> [1, 2) (bin 4, not the last regular bin), 0.6 -> [.5, .75) (bin 2);
    # bg 0.3 -> bin 1, 0.8 -> bin 3; the ignored 0.9 nowhere.
    assert acc.foreground_hist.tolist() == [0, 0, 1, 0, 1, 0]
    assert acc.background_hist.tolist() == [0, 1, 0, 1, 0, 0]


def test_pxap_step_sum_and_piou_by_hand():
    result = _mask_case().compute()
    # Descending: tp = [0,1,1,2,2,2], fp = [0,0,1,1,2,2], fn = [2,1,1,0,0,0].
    # precision = [nan, 1, 1/2, 2/3, 1/2, 1/2], recall = [0, 1/2, 1/2, 1, 1, 1].
    # PxAP = 1 * 1/2 + 1/2 * 0 + 2/3 * 1/2 + 0 + 0 = 5/6.
    assert result["PxAP"] == pytest.approx(100 * 5 / 6, abs=1e-12)
    # IoU = tp / (tp + fp + fn) = [0, 1/2, 1/3, 2/3, 1/2, 1/2]: the max 2/3 at scores >= 0.5.
    assert result["pIoU"] == pytest.approx(100 * 2 / 3, abs=1e-12)
    assert result["pIoU_threshold"] == 0.5
    # Per CAM threshold, ascending tau = 0, .25, .5, .75.
    np.testing.assert_allclose(result["precision"], [1 / 2, 1 / 2, 2 / 3, 1 / 2])
    np.testing.assert_allclose(result["recall"], [1, 1, 1, 1 / 2])
    np.testing.assert_allclose(result["IoU"], [50, 50, 200 / 3, 100 / 3])


def test_pxap_bins_use_the_np_arange_edges():
    acc = MaskAccumulator(0.01)
    scores = np.array([[0.35, 0.7, 0.0]])  # below the edges 0.35000000000000003 and 0.7000000000000001
    acc.accumulate(scores, np.array([[1, 1, 0]], dtype=np.uint8))
    assert np.flatnonzero(acc.foreground_hist).tolist() == [34, 69]


def test_constant_map_pxap_is_the_foreground_fraction():
    acc = MaskAccumulator(0.001)
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[:3, :5] = 1  # 15 of 100 pixels
    labels[9, :] = 255  # ignored: 15 of 90
    acc.accumulate(np.zeros((10, 10)), labels)
    assert acc.compute()["PxAP"] == pytest.approx(100 * 15 / 90, abs=1e-12)


def test_mask_merge_is_exact_and_no_foreground_raises():
    rng = np.random.default_rng(1)
    maps = [prepare_scoremap(rng.random((5, 5)), 16) for _ in range(3)]
    labels = [(rng.random((16, 16)) > 0.6).astype(np.uint8) for _ in range(3)]
    whole, left, right = MaskAccumulator(0.001), MaskAccumulator(0.001), MaskAccumulator(0.001)
    for k, (scoremap, label) in enumerate(zip(maps, labels, strict=True)):
        whole.accumulate(scoremap, label)
        (left if k < 2 else right).accumulate(scoremap, label)
    left.merge(right)
    assert left.compute()["PxAP"] == whole.compute()["PxAP"]
    empty = MaskAccumulator(0.01)
    empty.accumulate(maps[0], np.zeros((16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="no foreground"):
        empty.compute()


def test_metrics_dict_format():
    box = _two_image_box_accumulator(0.01)
    result = metrics_dict(box, _mask_case())
    assert result["num_images"] == 2 and result["cam_curve_interval"] == 0.01
    assert result["iou_thresholds"] == [30, 50, 70]
    assert result["BoxAcc"] == {"30": 100.0, "50": 100.0, "70": 100.0}
    assert result["best_threshold"] == {"30": 0.0, "50": 0.5, "70": 0.5}  # int(0.5 * 255) = 127
    assert result["MaxBoxAcc"] == 50.0 and result["Top-1 Loc"] == 50.0
    assert result["PxAP"] == pytest.approx(100 * 5 / 6)
    boxes_only = metrics_dict(box, None)
    assert boxes_only["PxAP"] is None and boxes_only["pIoU"] is None
    masks_only = metrics_dict(None, _mask_case())
    assert masks_only["MaxBoxAccV2"] is None and masks_only["BoxAcc"] == {"30": None, "50": None, "70": None}


def test_write_curves_two_splits_with_empty_cells(tmp_path):
    import csv

    from dawsol.protocol import write_curves

    path = tmp_path / "curves.csv"
    write_curves(path, {"val": (_two_image_box_accumulator(0.25), None), "test": (None, _mask_case())})
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["split", "threshold", "BoxAcc_30", "BoxAcc_50", "BoxAcc_70", "precision", "recall", "IoU"]
    assert [r[:2] for r in rows[1:]] == [[s, t] for s in ("val", "test") for t in ("0.0", "0.25", "0.5", "0.75")]
    assert rows[1][2:] == ["100.0", "50.0", "50.0", "", "", ""]  # tau 0: image 2 only at IoU 30
    assert rows[7][2:5] == ["", "", ""] and float(rows[7][5]) == 2 / 3  # test, tau 0.5: precision 2/3
