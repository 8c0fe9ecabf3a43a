"""The library's box extraction against the straightforward one-search-per-threshold baseline
(benchmarks/reference_evaluation.py): the same boxes, in the same order, at every threshold."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dawsol.evaluation import (
    BoxAccumulator,
    cam_thresholds,
    metrics_dict,
    normalize_scoremap,
    prepare_scoremap,
    scoremap_boxes,
)

_spec = importlib.util.spec_from_file_location(
    "reference_evaluation", Path(__file__).resolve().parents[1] / "benchmarks" / "reference_evaluation.py"
)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def _maps() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    maps = [prepare_scoremap(rng.random((n, n)), 64) for n in (3, 7, 14)]  # smooth, several blobs
    maps.append(prepare_scoremap(rng.random((64, 64)), 64))  # noise: many contours, ties in area
    maps.append((rng.random((24, 24)) > 0.45).astype(np.float64))  # binary: holes, islands, 1-px parts
    rings = np.zeros((40, 40))
    rings[2:38, 2:38] = 0.4  # nested rings of rising value: holes within holes, touching the border below
    rings[6:20, 6:34] = 0.0
    rings[8:18, 8:30] = 0.7
    rings[10:16, 10:28] = 0.1
    rings[12:14, 12:14] = 1.0
    rings[30:40, 0:12] = 0.9  # touches the bottom and left borders
    rings[25, 25] = rings[26, 26] = rings[27, 25] = 0.9  # diagonal-only neighbours
    maps.append(rings)
    maps.append(np.zeros((16, 16)))
    maps.append(prepare_scoremap(rng.random((5, 9)) ** 3, 48))
    maps.append((rng.random((30, 50)) > 0.5) * rng.random((30, 50)))  # not square
    maps.append(normalize_scoremap(rng.random((3, 70))))  # thin
    maps += [np.ones((1, 1)), np.array([[0.0, 1.0, 0.3]]), np.array([[1.0], [0.0], [1.0]])]
    return maps


@pytest.mark.parametrize("interval", [0.01, 0.001])
def test_boxes_match_the_baseline_at_every_threshold(interval):
    thresholds = cam_thresholds(interval)
    for k, scoremap in enumerate(_maps()):
        expected_all, expected_largest = reference.boxes_per_threshold(scoremap, thresholds)
        got_all = scoremap_boxes(scoremap, thresholds, multi_contour=True)
        got_largest = scoremap_boxes(scoremap, thresholds, multi_contour=False)
        assert len(got_all) == len(got_largest) == len(thresholds)
        for i, tau in enumerate(thresholds):
            assert got_all[i].tolist() == expected_all[i].tolist(), (k, tau)
            assert got_largest[i].tolist() == expected_largest[i].tolist(), (k, tau)


def test_accumulator_matches_the_baseline_accumulator():
    maps = _maps()
    gts = [np.array([[5, 6, 40, 50]]), np.array([[0, 0, 10, 10], [20, 20, 63, 63]]), np.array([[12, 12, 14, 14]])]
    fast, slow = BoxAccumulator([30, 50, 70], 0.001), reference.ReferenceBoxAccumulator([30, 50, 70], 0.001)
    for k, scoremap in enumerate(maps):
        h, w = scoremap.shape
        gt = np.minimum(gts[k % len(gts)], [w - 1, h - 1, w - 1, h - 1])
        fast.accumulate(scoremap, gt, correct_class=k % 3 != 0)
        slow.accumulate(scoremap, gt, correct_class=k % 3 != 0)
    np.testing.assert_array_equal(fast.num_correct, slow.num_correct)
    np.testing.assert_array_equal(fast.num_correct_largest, slow.num_correct_largest)
    assert metrics_dict(fast, None) == metrics_dict(slow, None)


def test_levels_flagged_single_contour_have_exactly_one_contour():
    from dawsol.evaluation.boxes import _single_contour_levels

    flagged = 0
    for scoremap in _maps():
        image = (scoremap * 255).astype(np.uint8)
        single = _single_contour_levels(image)
        for t in np.flatnonzero(single).tolist():
            binary = (image > t).astype(np.uint8)
            assert (
                len(reference.cv2.findContours(binary, reference.cv2.RETR_TREE, reference.cv2.CHAIN_APPROX_SIMPLE)[0])
                == 1
            )
            flagged += 1
    assert flagged > 100  # the fast path is exercised
