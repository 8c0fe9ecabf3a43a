"""A straightforward WSOL box evaluation: one threshold and one contour search per CAM threshold.

This is the baseline the library's box extraction (dawsol.protocol.boxes) is measured and
checked against: it follows the protocol step by step (docs/protocol.md sections 2.2-2.4)
with no reuse between thresholds, so it is slow but easy to check by reading. Both box sets the
library scores (every contour, and the largest one) come from the same search per threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from dawsol.protocol import BoxAccumulator


def boxes_per_threshold(
    scoremap: np.ndarray, cam_thresholds: Sequence[float]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per CAM threshold, the boxes of every contour and the box of the largest contour."""
    height, width = scoremap.shape
    image = (scoremap * 255).astype(np.uint8)
    all_boxes, largest_boxes = [], []
    for tau in cam_thresholds:
        _, binary = cv2.threshold(image, int(tau * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) == 0:
            all_boxes.append(np.zeros((1, 4), dtype=np.int64))
            largest_boxes.append(np.zeros((1, 4), dtype=np.int64))
            continue
        boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        largest = max(range(len(contours)), key=lambda i: cv2.contourArea(contours[i]))
        all_boxes.append(np.asarray(boxes, dtype=np.int64))
        largest_boxes.append(all_boxes[-1][largest : largest + 1])
    return all_boxes, largest_boxes


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of inclusive-corner boxes (+1 convention), every pair by broadcasting; degenerate pairs give 0."""
    a, b = boxes_a[:, None, :], boxes_b[None, :, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def best_iou_per_threshold(per_threshold: list[np.ndarray], gt_boxes: np.ndarray) -> np.ndarray:
    """Per CAM threshold, the best IoU of any of its boxes with any GT box."""
    best_over_gt = iou_matrix(np.concatenate(per_threshold), np.asarray(gt_boxes, dtype=np.int64)).max(axis=1)
    ends = np.cumsum([len(boxes) for boxes in per_threshold])
    return np.asarray(
        [best_over_gt[end - len(boxes) : end].max() for boxes, end in zip(per_threshold, ends, strict=True)]
    )


class ReferenceBoxAccumulator(BoxAccumulator):
    """BoxAccumulator whose per-image step is the straightforward search above (same counts, same compute)."""

    def accumulate(self, scoremap: np.ndarray, gt_boxes: np.ndarray, correct_class: bool | None = None) -> None:
        all_boxes, largest_boxes = boxes_per_threshold(scoremap, self.cam_thresholds)
        multi = best_iou_per_threshold(all_boxes, gt_boxes)
        largest = best_iou_per_threshold(largest_boxes, gt_boxes)
        best = multi if self.multi_contour else largest
        correct = np.stack([best >= delta / 100 for delta in self._deltas])
        self.num_correct += correct
        self.num_correct_largest += largest >= 0.5
        if correct_class is not None:
            self.num_with_class += 1
            if correct_class:
                self.num_correct_top1 += correct
        self.num_images += 1
