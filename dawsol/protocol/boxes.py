"""Boxes from a score map and their IoU with ground truth, exactly as the WSOL protocol computes them.

The protocol (``compute_bboxes_from_scoremaps``) thresholds ``uint8(scoremap * 255)`` at
``int(tau * max)`` with a strict ``>`` for every CAM threshold tau, runs ``cv2.findContours``
(RETR_TREE, so hole contours count, CHAIN_APPROX_SIMPLE) and turns each contour's bounding rect
``x, y, w, h`` into the box ``(x, y, min(x + w, W - 1), min(y + h, H - 1))``: exclusive corners,
which the +1 inclusive IoU then treats as inclusive. A mask without contours gives ``[0, 0, 0, 0]``.

This implementation gives the same boxes, in the same order, with far fewer contour searches
(benchmarks/reference_evaluation.py is the straightforward one-search-per-threshold version it is
tested against): a uint8 map has at most 256 distinct pixel values, so the ~1000 thresholds give
at most 257 distinct binary masks. A mask proven to have exactly one contour (see
``_single_contour_levels``) needs no search: its one box is its foreground's bounding box. Every
other distinct mask is searched once, cropped to its foreground plus a one-pixel margin (which
leaves every contour and their order unchanged), and the bounding rects and areas of all
contours are computed at once.

Scores need each mask's boxes, not their order: ``best_ious`` takes a mask with hundreds of
contours (noisy maps), where tracing and reducing every contour costs most, from connected
components instead (``_component_boxes``): one outer contour per 8-connected foreground component
and one hole contour per 4-connected background component off the frame, with the same bounding
rects. The largest contour is then the outer one of greatest area (a hole's polygon lies inside
its parent's, which cv2 lists first): only components whose bounding box could hold that area are
traced, and a tie falls back to the search, which alone knows cv2's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from dawsol.protocol.scoremap import check_scoremap
from dawsol.threads import pinned_threads

# A searched mask whose neighbour below had this many contours is read from connected components
# (about 0.5 ms whatever the count) rather than traced (about 1 us per contour, with the reductions).
_MANY_CONTOURS = 500


def check_boxes(boxes: np.ndarray) -> None:
    """Raise ValueError unless ``boxes`` is K x 4 (x0, y0, x1, y1) with 0 <= x0 <= x1 and 0 <= y0 <= y1."""
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be a K x 4 array, got shape {boxes.shape}")
    if (boxes < 0).any():
        raise ValueError(f"box coordinates must not be negative: {boxes.tolist()}")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"boxes must have x0 <= x1 and y0 <= y1: {boxes.tolist()}")


def multiple_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """The N x K IoU matrix of inclusive-corner boxes (+1 convention); a denominator <= 0 gives IoU 0."""
    a = np.asarray(boxes_a, dtype=np.int64)
    b = np.asarray(boxes_b, dtype=np.int64)
    check_boxes(a)
    check_boxes(b)
    a = a[:, None, :]
    b = b[None, :, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    denominator = area_a + area_b - inter
    degenerate = denominator <= 0
    ious = inter / np.where(degenerate, 1, denominator)
    ious[degenerate] = 0.0
    return ious


@dataclass(frozen=True)
class _DistinctMaskBoxes:
    """Candidate boxes of every distinct binary mask of one score map."""

    mask_of_threshold: np.ndarray  # T: index of the distinct mask each CAM threshold gives
    boxes: np.ndarray  # M x 4: the boxes of all distinct masks, mask after mask, contours in cv2 order (if ordered)
    starts: np.ndarray  # D: index in `boxes` of each distinct mask's first box
    largest: np.ndarray  # D: index in `boxes` of each distinct mask's largest contour (first on ties)


def _at_or_below(values: np.ndarray) -> np.ndarray:
    """``out[t]`` = how many of the uint8 ``values`` are <= t, for t in 0..255."""
    histogram = cv2.calcHist([np.ascontiguousarray(values)], [0], None, [256], [0, 256])
    return histogram.ravel().astype(np.int64).cumsum()


def _single_contour_levels(image: np.ndarray) -> np.ndarray:
    """For each pixel threshold t in 0..255, whether ``image > t`` has exactly one contour (sufficient test).

    If every background pixel sees the border along its row or its column (no foreground on one
    side), there is no hole; the Euler number (8-connected foreground, from 2x2 bit-quad counts)
    is then the number of components, and one component without holes has exactly one contour,
    whose bounding rect is the mask's. A count over intervals ``a <= t < b`` is
    ``at_or_below(a) - at_or_below(b)``, for all t at once; zero pixels are never foreground.
    """
    padded = np.zeros((image.shape[0] + 2, image.shape[1] + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = image
    # Gray's bit-quads: 4 x Euler = #(one pixel on) - #(three on) - 2 #(two on, diagonal).
    top_left, top_right, bottom_left, bottom_right = padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
    low_a, high_a = np.minimum(top_left, top_right), np.maximum(top_left, top_right)
    low_b, high_b = np.minimum(bottom_left, bottom_right), np.maximum(bottom_left, bottom_right)
    middle_low, middle_high = np.maximum(low_a, low_b), np.minimum(high_a, high_b)
    main_low, main_high = np.minimum(top_left, bottom_right), np.maximum(top_left, bottom_right)
    anti_low, anti_high = np.minimum(top_right, bottom_left), np.maximum(top_right, bottom_left)
    one_on = _at_or_below(np.maximum(middle_low, middle_high)) - _at_or_below(np.maximum(high_a, high_b))
    three_on = _at_or_below(np.minimum(low_a, low_b)) - _at_or_below(np.minimum(middle_low, middle_high))
    main_on = _at_or_below(anti_high) - _at_or_below(np.maximum(main_low, anti_high))
    anti_on = _at_or_below(main_high) - _at_or_below(np.maximum(anti_low, main_high))
    four_euler = one_on - three_on - 2 * (main_on + anti_on)
    # A pixel is background with foreground on both sides of its row and of its column iff
    # value <= t < min(the four one-sided maxima); the frame beyond the border is background.
    columns = padded[:, 1:-1]
    above = np.maximum.accumulate(columns[:-2], axis=0)
    below = np.maximum.accumulate(columns[:1:-1], axis=0)[::-1]
    rows = np.ascontiguousarray(padded[1:-1].T)
    left = np.maximum.accumulate(rows[:-2], axis=0).T
    right = np.maximum.accumulate(rows[:1:-1], axis=0)[::-1].T
    enclosed = np.minimum(np.minimum(above, below), np.minimum(left, right))
    pixels = padded[1:-1, 1:-1]
    trapped = _at_or_below(pixels) - _at_or_below(np.maximum(pixels, enclosed))
    return (four_euler == 4) & (trapped == 0)


def _first_last_above(peaks: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold, the first and last index where ``peaks > threshold`` (0 and -1 if there is none)."""
    above = peaks[None, :] > thresholds[:, None]
    return np.argmax(above, axis=1), len(peaks) - 1 - np.argmax(above[:, ::-1], axis=1)


def _component_boxes(binary: np.ndarray, left: int, top: int, width: int, height: int) -> tuple[np.ndarray, int] | None:
    """Every contour's box of a cropped mask (at ``left, top`` in a ``width`` x ``height`` image) in no particular
    order, and the index of the largest contour's box; None when two contours tie for largest.

    The crop is the foreground plus a one-pixel margin or the image border, so a background
    component touching the crop's frame is outside, not a hole.
    """
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    outer = stats[1:, :4].astype(np.int64)
    hole = cv2.connectedComponentsWithStats(binary ^ 1, connectivity=4)[2][1:, :4].astype(np.int64)
    x, y, w, h = hole.T
    hole = hole[(x > 0) & (y > 0) & (x + w < binary.shape[1]) & (y + h < binary.shape[0])]
    # A hole border runs through the foreground pixels next to the hole: one pixel beyond it on every side.
    rects = np.concatenate([outer, hole + np.array([-1, -1, 2, 2])]) + np.array([left, top, 0, 0])
    boxes = np.stack(
        [
            rects[:, 0],
            rects[:, 1],
            np.minimum(rects[:, 0] + rects[:, 2], width - 1),
            np.minimum(rects[:, 1] + rects[:, 3], height - 1),
        ],
        axis=1,
    )
    # An outer contour runs through pixel centres inside its component's bounding box, so its area is
    # at most (w - 1)(h - 1); trace the biggest component and every one that could match it.
    bound = (outer[:, 2] - 1) * (outer[:, 3] - 1)
    biggest = int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    areas = {biggest: _outer_area(labels, stats, biggest)}
    for j in np.flatnonzero(bound >= areas[biggest]).tolist():
        if j != biggest:
            areas[j] = _outer_area(labels, stats, j)
    largest = max(areas.values())
    if sum(area == largest for area in areas.values()) > 1:
        return None
    return boxes, max(areas, key=areas.__getitem__)


def _outer_area(labels: np.ndarray, stats: np.ndarray, component: int) -> float:
    """``cv2.contourArea`` of the outer contour of 0-based ``component`` (traced alone: the same points)."""
    x, y, w, h = stats[component + 1, :4]
    alone = (labels[y : y + h, x : x + w] == component + 1).view(np.uint8)
    return cv2.contourArea(cv2.findContours(alone, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0][0])


def _distinct_mask_boxes(scoremap: np.ndarray, cam_thresholds: Sequence[float], ordered: bool) -> _DistinctMaskBoxes:
    """The boxes of every distinct mask; unless ``ordered``, a mask's boxes may come in any order."""
    check_scoremap(scoremap)
    height, width = scoremap.shape
    image = (scoremap * 255).astype(np.uint8)
    peak = float(image.max())
    pixel_thresholds = (np.asarray(cam_thresholds, dtype=np.float64) * peak).astype(np.int64)
    # Two thresholds give the same mask iff the same number of distinct pixel values lie at or below them.
    values = np.flatnonzero(np.bincount(image.ravel(), minlength=256))
    levels = np.searchsorted(values, pixel_thresholds, side="right")
    distinct_levels, first, mask_of_threshold = np.unique(levels, return_index=True, return_inverse=True)
    thresholds = pixel_thresholds[first]
    empty = distinct_levels == len(values)  # only the highest level can be empty
    # The foreground's bounding box at each level: a single contour's box, and the crop of a search.
    y0, y1 = _first_last_above(image.max(axis=1), thresholds)
    x0, x1 = _first_last_above(image.max(axis=0), thresholds)
    single = _single_contour_levels(image)[thresholds] & ~empty
    # Search the other masks cropped to the foreground plus a one-pixel margin (background, or the
    # image border, where findContours adds its own zero border): the same contours, same order.
    searched = np.flatnonzero(~single & ~empty)
    tops, lefts = np.maximum(y0 - 1, 0).tolist(), np.maximum(x0 - 1, 0).tolist()
    bottoms, rights = (y1 + 2).tolist(), (x1 + 2).tolist()
    contours: list[np.ndarray] = []
    from_components: dict[int, tuple[np.ndarray, int]] = {}
    counts = np.ones(len(thresholds), dtype=np.int64)
    # OpenCV's connected components stay on this thread: once its thread pool has run, a process forked later
    # (an evaluation worker) deadlocks in OpenCV, and on one mask the pool costs more CPU than it saves.
    with pinned_threads(cv2.getNumThreads, cv2.setNumThreads):
        for m in searched.tolist():
            crop = image[tops[m] : bottoms[m], lefts[m] : rights[m]]
            binary = np.greater(crop, thresholds[m]).view(np.uint8)
            # Adjacent masks have similar contour counts: the one below tells whether components pay off.
            if not ordered and m > 0 and counts[m - 1] >= _MANY_CONTOURS:
                found_boxes = _component_boxes(binary, lefts[m], tops[m], width, height)
                if found_boxes is not None:
                    from_components[m] = found_boxes
                    counts[m] = len(found_boxes[0])
                    continue
            found = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE, offset=(lefts[m], tops[m]))[0]
            contours.extend(found)
            counts[m] = len(found)
    starts = np.zeros(len(thresholds), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    boxes = np.zeros((int(counts.sum()), 4), dtype=np.int64)  # an empty mask keeps its [0, 0, 0, 0]
    # boundingRect gives w = xmax - xmin + 1, so the protocol's exclusive corner x + w is xmax + 1.
    boxes[starts[single]] = np.stack(
        [x0[single], y0[single], np.minimum(x1[single] + 1, width - 1), np.minimum(y1[single] + 1, height - 1)], axis=1
    )
    largest = starts.copy()
    for m, (mask_boxes, index) in from_components.items():
        boxes[starts[m] : starts[m] + counts[m]] = mask_boxes
        largest[m] = starts[m] + index
    searched = searched[~np.isin(searched, list(from_components))]
    if contours:
        rows = np.repeat(starts[searched], counts[searched])
        rows += np.arange(len(rows)) - np.repeat(np.cumsum(counts[searched]) - counts[searched], counts[searched])
        boxes[rows], twice_area = _contour_boxes_and_areas(contours, width, height)
        # The largest contour of each searched mask, the first one on ties (as Python's max does).
        owner = np.repeat(searched, counts[searched])
        by_area = np.lexsort((rows, -twice_area, owner))
        group_firsts = np.cumsum(counts[searched]) - counts[searched]
        largest[searched] = rows[by_area[group_firsts]]
    return _DistinctMaskBoxes(
        mask_of_threshold=mask_of_threshold.reshape(-1), boxes=boxes, starts=starts, largest=largest
    )


def _contour_boxes_and_areas(contours: list[np.ndarray], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's box of each contour and twice its ``cv2.contourArea``, for all contours at once."""
    lengths = np.fromiter(map(len, contours), dtype=np.int64, count=len(contours))
    points = np.concatenate(contours).reshape(-1, 2)
    firsts = np.zeros(len(contours), dtype=np.int64)
    np.cumsum(lengths[:-1], out=firsts[1:])
    xs, ys = points[:, 0], points[:, 1]
    boxes = np.stack(
        [
            np.minimum.reduceat(xs, firsts),
            np.minimum.reduceat(ys, firsts),
            np.minimum(np.maximum.reduceat(xs, firsts) + 1, width - 1),
            np.minimum(np.maximum.reduceat(ys, firsts) + 1, height - 1),
        ],
        axis=1,
    ).astype(np.int64)
    # cv2.contourArea is |shoelace sum| / 2 over the closed polygon: exact on integer points
    # (in float64, every product and sum here is an integer far below 2**53).
    x, y = xs.astype(np.float64), ys.astype(np.float64)
    x_prev, y_prev = np.empty_like(x), np.empty_like(y)
    x_prev[1:], y_prev[1:] = x[:-1], y[:-1]
    x_prev[firsts], y_prev[firsts] = x[firsts + lengths - 1], y[firsts + lengths - 1]
    twice_area = np.abs(np.add.reduceat(x_prev * y - y_prev * x, firsts))
    return boxes, twice_area


def scoremap_boxes(
    scoremap: np.ndarray, cam_thresholds: Sequence[float], multi_contour: bool = True
) -> list[np.ndarray]:
    """The protocol's candidate boxes at each CAM threshold (n_t x 4 int64 each).

    ``multi_contour=False`` keeps only the contour of largest ``cv2.contourArea`` (the first on ties).
    """
    found = _distinct_mask_boxes(scoremap, cam_thresholds, ordered=True)
    ends = np.append(found.starts[1:], len(found.boxes))
    if multi_contour:
        return [found.boxes[found.starts[m] : ends[m]] for m in found.mask_of_threshold]
    return [found.boxes[found.largest[m]][None] for m in found.mask_of_threshold]


def best_ious(
    scoremap: np.ndarray, gt_boxes: np.ndarray, cam_thresholds: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per CAM threshold, the best IoU with any GT box of (all contours' boxes, the largest contour's box)."""
    gt = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    if len(gt) == 0:
        raise ValueError("an image needs at least one ground-truth box")
    found = _distinct_mask_boxes(scoremap, cam_thresholds, ordered=False)
    box_best = multiple_iou(found.boxes, gt).max(axis=1)
    mask_best = np.maximum.reduceat(box_best, found.starts)
    return mask_best[found.mask_of_threshold], box_best[found.largest][found.mask_of_threshold]
