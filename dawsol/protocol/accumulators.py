"""Split-level WSOL metrics from per-image score maps: counts and histograms only, so shards merge exactly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dawsol.protocol.boxes import best_ious
from dawsol.protocol.scoremap import cam_thresholds, check_scoremap

# GT-known Loc, Top-1 Loc and MaxBoxAcc (v1) are read at IoU 50, whatever the curve thresholds are.
_IOU_50 = 50


def _first_max(values: np.ndarray) -> tuple[float, int]:
    """The maximum and the index of its first occurrence (the lowest CAM threshold on ties)."""
    index = int(np.argmax(values))
    return float(values[index]), index


class BoxAccumulator:
    """BoxAcc curves over CAM thresholds at each IoU threshold, with MaxBoxAccV2, MaxBoxAcc,
    GT-known Loc and Top-1 Loc (docs/protocol.md sections 2.2-2.5).

    ``multi_contour`` selects the candidate boxes of the curves, MaxBoxAccV2, GT-known Loc and
    Top-1 Loc: every contour (True, the protocol's default) or only the largest. MaxBoxAcc (v1)
    always uses the largest contour at IoU 50.
    """

    def __init__(self, iou_thresholds: Sequence[int], cam_curve_interval: float, multi_contour: bool = True) -> None:
        self.iou_thresholds = [int(d) for d in iou_thresholds]
        if not self.iou_thresholds or any(not 0 < d <= 100 for d in self.iou_thresholds):
            raise ValueError(f"IoU thresholds must be integers in 1..100, got {list(iou_thresholds)}")
        self.cam_curve_interval = float(cam_curve_interval)
        self.multi_contour = multi_contour
        self.cam_thresholds = cam_thresholds(self.cam_curve_interval)
        self._deltas = sorted(set(self.iou_thresholds) | {_IOU_50})
        shape = (len(self._deltas), len(self.cam_thresholds))
        self.num_images = 0
        self.num_with_class = 0  # images accumulated with correct_class given
        self.num_correct = np.zeros(shape, dtype=np.int64)
        self.num_correct_top1 = np.zeros(shape, dtype=np.int64)
        self.num_correct_largest = np.zeros(len(self.cam_thresholds), dtype=np.int64)  # v1, IoU 50

    def accumulate(self, scoremap: np.ndarray, gt_boxes: np.ndarray, correct_class: bool | None = None) -> None:
        """Add one image: its evaluated score map (float64 in [0, 1]), its GT boxes at the score map's
        size (K x 4 inclusive corners, K >= 1) and whether its predicted class is right (None: unknown)."""
        multi, largest = best_ious(scoremap, gt_boxes, self.cam_thresholds)
        best = multi if self.multi_contour else largest
        correct = np.stack([best >= delta / 100 for delta in self._deltas])
        self.num_correct += correct
        self.num_correct_largest += largest >= _IOU_50 / 100
        if correct_class is not None:
            self.num_with_class += 1
            if correct_class:
                self.num_correct_top1 += correct
        self.num_images += 1

    def merge(self, other: BoxAccumulator) -> None:
        """Add the counts of ``other``, an accumulator with the same settings over other images."""
        if (other.iou_thresholds, other.cam_thresholds, other.multi_contour) != (
            self.iou_thresholds,
            self.cam_thresholds,
            self.multi_contour,
        ):
            raise ValueError("cannot merge box accumulators with different settings")
        self.num_images += other.num_images
        self.num_with_class += other.num_with_class
        self.num_correct += other.num_correct
        self.num_correct_top1 += other.num_correct_top1
        self.num_correct_largest += other.num_correct_largest

    def _accuracy(self, counts: np.ndarray) -> np.ndarray:
        return counts * 100.0 / float(self.num_images)

    def compute(self) -> dict[str, Any]:
        """The split's box metrics (percentages) and the chosen CAM threshold of each.

        Keys: ``curves`` ({delta: BoxAcc per CAM threshold}), ``BoxAcc`` and ``best_threshold``
        ({delta: value}), ``MaxBoxAccV2``, ``GT-known Loc``, ``MaxBoxAcc``, ``Top-1 Loc`` (None
        unless every image came with ``correct_class``) and ``chosen_threshold`` (the CAM
        threshold of MaxBoxAcc, GT-known Loc and Top-1 Loc).
        """
        if self.num_images == 0:
            raise ValueError("no image was accumulated")
        curves = {d: self._accuracy(self.num_correct[i]) for i, d in enumerate(self._deltas)}
        box_acc, best_threshold = {}, {}
        for delta in self.iou_thresholds:
            box_acc[delta], index = _first_max(curves[delta])
            best_threshold[delta] = self.cam_thresholds[index]
        max_box_acc, v1_index = _first_max(self._accuracy(self.num_correct_largest))
        gt_known, gt_known_index = _first_max(curves[_IOU_50])
        top1: float | None = None
        top1_threshold: float | None = None
        if self.num_with_class == self.num_images:
            top1, top1_index = _first_max(self._accuracy(self.num_correct_top1[self._deltas.index(_IOU_50)]))
            top1_threshold = self.cam_thresholds[top1_index]
        return {
            "curves": {d: curves[d] for d in self.iou_thresholds},
            "BoxAcc": box_acc,
            "best_threshold": best_threshold,
            "MaxBoxAccV2": float(np.mean([box_acc[d] for d in self.iou_thresholds])),
            "GT-known Loc": gt_known,
            "MaxBoxAcc": max_box_acc,
            "Top-1 Loc": top1,
            "chosen_threshold": {
                "MaxBoxAcc": self.cam_thresholds[v1_index],
                "GT-known Loc": self.cam_thresholds[gt_known_index],
                "Top-1 Loc": top1_threshold,
            },
        }


class MaskAccumulator:
    """PxAP and pIoU from score histograms pooled over the split (docs/protocol.md 2.6-2.7).

    Histogram edges are the CAM thresholds plus 1.0, 2.0 and 3.0: every bin is left-closed but
    the last, so a score of exactly 1.0 falls in [1, 2). Ignore pixels (255) are dropped.
    """

    def __init__(self, cam_curve_interval: float) -> None:
        self.cam_curve_interval = float(cam_curve_interval)
        self.cam_thresholds = cam_thresholds(self.cam_curve_interval)
        self.edges = np.append(np.asarray(self.cam_thresholds, dtype=np.float64), [1.0, 2.0, 3.0])
        self.num_images = 0
        self.foreground_hist = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.background_hist = np.zeros(len(self.edges) - 1, dtype=np.int64)

    def accumulate(self, scoremap: np.ndarray, gt_mask: np.ndarray) -> None:
        """Add one image: its score map and its label map of the same shape (1 fg, 0 bg, 255 ignore)."""
        check_scoremap(scoremap)
        if gt_mask.shape != scoremap.shape:
            raise ValueError(f"mask shape {gt_mask.shape} differs from score map shape {scoremap.shape}")
        self.foreground_hist += np.histogram(scoremap[gt_mask == 1], bins=self.edges)[0]
        self.background_hist += np.histogram(scoremap[gt_mask == 0], bins=self.edges)[0]
        self.num_images += 1

    def merge(self, other: MaskAccumulator) -> None:
        """Add the histograms of ``other``, an accumulator with the same interval over other images."""
        if other.cam_thresholds != self.cam_thresholds:
            raise ValueError("cannot merge mask accumulators with different CAM thresholds")
        self.num_images += other.num_images
        self.foreground_hist += other.foreground_hist
        self.background_hist += other.background_hist

    @property
    def num_foreground(self) -> int:
        """The number of foreground pixels accumulated so far."""
        return int(self.foreground_hist.sum())

    def compute(self) -> dict[str, Any]:
        """PxAP, pIoU (the max pooled IoU) and its CAM threshold, and precision / recall / IoU per CAM threshold.

        Raises ValueError when no foreground pixel was accumulated.
        """
        if self.num_foreground == 0:
            raise ValueError("no foreground pixel in any ground-truth mask")
        # Entry j of the cumulative sums counts the scores >= edges[-2 - j] (entry 0: >= 2.0).
        tp = self.foreground_hist[::-1].astype(np.float64).cumsum()
        fp = self.background_hist[::-1].astype(np.float64).cumsum()
        fn = float(self.num_foreground) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
        iou = tp / (fp + fn + tp) * 100
        predicted = (tp + fp) != 0
        pxap = (precision[1:] * np.diff(recall))[predicted[1:]].sum() * 100
        piou, piou_index = _first_max(iou)
        thresholds_descending = self.edges[-2::-1]
        # Per CAM threshold in ascending order: drop the >= 2.0 and >= 1.0 entries, then reverse.
        per_threshold = slice(None, 1, -1)
        return {
            "PxAP": float(pxap),
            "pIoU": piou,
            "pIoU_threshold": float(thresholds_descending[piou_index]),
            "precision": precision[per_threshold],
            "recall": recall[per_threshold],
            "IoU": iou[per_threshold],
        }
