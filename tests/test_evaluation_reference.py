"""The library's box extraction against the straightforward one-search-per-threshold baseline
(benchmarks/reference_evaluation.py): the same boxes, in the same order, at every threshold."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dawsol.protocol import (
    BoxAccumulator,
    best_ious,
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


# the protocol's 0.001 is 10x the thresholds of 0.01: the full suite (and benchmarks/bench_evaluation.py) run it
@pytest.mark.parametrize("interval", [0.01, pytest.param(0.001, marks=pytest.mark.slow)])
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
    from dawsol.protocol.boxes import _single_contour_levels

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


def _adversarial_maps(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Small random maps full of holes, islands in holes, touching and diagonal-only parts, border contact, ties."""
    maps = []
    for k in range(count):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        if k % 5 == 0:
            scoremap = (rng.random((h, w)) < rng.uniform(0.2, 0.8)) * 1.0  # binary noise
        elif k % 5 == 1:
            scoremap = rng.random((h, w)) * (rng.random((h, w)) > 0.4)
        elif k % 5 == 2:
            smooth = prepare_scoremap(rng.random(tuple(int(v) for v in rng.integers(2, 8, 2))), max(h, w, 2))
            scoremap = smooth + 0.3 * rng.random(smooth.shape)  # the benchmark's noisy kind, small
        elif k % 5 == 3:
            scoremap = rng.integers(0, 4, (h, w)) / 3.0  # few levels: many equal areas
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            lattice = (xx + yy) % int(rng.integers(2, 4)) == 0  # diagonal lines and checkers
            scoremap = (lattice | (rng.random((h, w)) < 0.2)) * rng.random((h, w))
        maps.append(scoremap / scoremap.max() if scoremap.max() > 0 else scoremap)
    return maps


def test_boxes_from_components_match_the_baseline_as_sets(monkeypatch):
    """Every searched mask but the first goes through _component_boxes: the same boxes and the same largest."""
    from dawsol.protocol import boxes

    monkeypatch.setattr(boxes, "_MANY_CONTOURS", 0)
    calls = {"components": 0, "ties": 0}
    component_boxes = boxes._component_boxes

    def counting(*args):
        found = component_boxes(*args)
        calls["components" if found is not None else "ties"] += 1
        return found

    monkeypatch.setattr(boxes, "_component_boxes", counting)
    thresholds = cam_thresholds(0.01)
    for k, scoremap in enumerate(_maps() + _adversarial_maps(np.random.default_rng(11), 200)):
        expected_all, expected_largest = reference.boxes_per_threshold(scoremap, thresholds)
        found = boxes._distinct_mask_boxes(scoremap, thresholds, ordered=False)
        ends = np.append(found.starts[1:], len(found.boxes))
        for i, m in enumerate(found.mask_of_threshold.tolist()):
            got = found.boxes[found.starts[m] : ends[m]]
            assert sorted(got.tolist()) == sorted(expected_all[i].tolist()), (k, i)
            assert found.boxes[found.largest[m]].tolist() == expected_largest[i][0].tolist(), (k, i)
    assert calls["components"] > 1000 and calls["ties"] > 10  # both the shortcut and its fallback are exercised


def test_component_boxes_give_up_on_a_tie_for_largest():
    from dawsol.protocol.boxes import _component_boxes

    binary = np.zeros((9, 12), dtype=np.uint8)
    binary[2:5, 1:4] = binary[2:5, 7:10] = 1  # two equal squares: only cv2's order picks one
    assert _component_boxes(binary, 0, 0, 12, 9) is None
    binary[5, 8] = 1
    found_boxes, largest = _component_boxes(binary, 0, 0, 12, 9)
    assert sorted(found_boxes.tolist()) == [[1, 2, 4, 5], [7, 2, 10, 6]]
    assert found_boxes[largest].tolist() == [7, 2, 10, 6]


def _noisy_best_ious(seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    scoremap = prepare_scoremap(rng.random((14, 14)), 224) + 0.3 * rng.random((224, 224))
    multi, largest = best_ious(scoremap / scoremap.max(), np.array([[10, 10, 60, 60]]), cam_thresholds(0.01))
    return [multi.tolist(), largest.tolist()]


def test_forked_workers_still_evaluate_after_the_parent_did():
    """The parent's component path must leave no OpenCV thread pool behind for forked workers (set up as
    ``dawsol metrics`` sets them up) to deadlock on."""
    import multiprocessing

    from dawsol.protocol import boxes
    from dawsol.protocol.evaluator import _init_worker

    assert boxes._MANY_CONTOURS < 1000  # a noisy 224 x 224 map takes the component path
    expected = _noisy_best_ious(3)
    with multiprocessing.get_context("fork").Pool(2, _init_worker) as pool:
        assert pool.map_async(_noisy_best_ious, [3, 3]).get(timeout=60) == [expected, expected]
