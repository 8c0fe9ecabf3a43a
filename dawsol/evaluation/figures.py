"""The figures of one cell: CAM overlays with predicted and GT boxes, the kept score maps, the assigner's sets.

``cams.png`` and ``cam_samples.npz`` (docs/architecture.md, "Cell outputs") come from the test
split's kept images of ``dawsol.evaluation.scoring.score_split``; ``assigner.png`` (an MLflow artifact of
DA cells) shows the Target Sample Assigner's universum, fake and true target on training images.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from dawsol.atomic import atomic_write_bytes
from dawsol.config import Settings
from dawsol.data.datasets import collate_eval, to_bgr
from dawsol.evaluation.scoring import SplitResult, eval_dataset
from dawsol.protocol.boxes import scoremap_boxes

GT_COLOR = (0, 200, 0)  # BGR
PRED_COLOR = (0, 0, 255)
ASSIGNMENT_COLORS = np.array([[120, 60, 20], [40, 40, 230], [60, 200, 60]], dtype=np.uint8)  # T^u, T^f, T^t (BGR)


def figure_threshold(metrics: Mapping[str, Any]) -> float:
    """The CAM threshold the figures use: the one GT-known Loc chose, else pIoU's, else 0.5."""
    chosen = metrics.get("chosen_threshold") or {}
    for key in ("GT-known Loc", "pIoU"):
        if isinstance(chosen.get(key), int | float):
            return float(chosen[key])
    return 0.5


def _overlay(image: np.ndarray, scoremap: np.ndarray) -> np.ndarray:
    heat = cv2.applyColorMap((scoremap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 0.5, heat, 0.5, 0)


def predicted_boxes(scoremap: np.ndarray, threshold: float) -> np.ndarray:
    """The protocol's boxes (every contour) of ``scoremap`` at CAM ``threshold``: K x 4, inclusive corners."""
    return scoremap_boxes(scoremap, [threshold], multi_contour=True)[0]


def tile(image: np.ndarray, scoremap: np.ndarray, gt: np.ndarray, threshold: float, caption: str) -> np.ndarray:
    """One panel: the CAM over the image, GT boxes in green, predicted boxes in red, scaled to >= 192 px."""
    scale = max(1, 192 // image.shape[0])
    panel = _overlay(image, scoremap)
    panel = cv2.resize(panel, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for boxes, color in ((gt, GT_COLOR), (predicted_boxes(scoremap, threshold), PRED_COLOR)):
        for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4):
            cv2.rectangle(panel, (int(x0) * scale, int(y0) * scale), (int(x1) * scale, int(y1) * scale), color, 2)
    cv2.putText(panel, caption[-28:], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def _grid(panels: list[np.ndarray], columns: int = 4) -> np.ndarray:
    height, width = panels[0].shape[:2]
    rows = -(-len(panels) // columns)
    canvas = np.full((rows * height, min(columns, len(panels)) * width, 3), 255, np.uint8)
    for index, panel in enumerate(panels):
        r, c = divmod(index, columns)
        canvas[r * height : (r + 1) * height, c * width : (c + 1) * width] = panel
    return canvas


def encode_png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def write_cams_png(path: Path, result: SplitResult, threshold: float) -> None:
    """``cams.png``: the kept images with the CAM overlay, predicted boxes at ``threshold`` and GT boxes."""
    panels = [
        tile(image, scoremap, gt, threshold, image_id)
        for image, scoremap, gt, image_id in zip(
            result.images, result.scoremaps, result.gt_boxes, result.image_ids, strict=True
        )
    ]
    atomic_write_bytes(path, encode_png(_grid(panels)))


def write_cam_samples(path: Path, result: SplitResult) -> None:
    """``cam_samples.npz``: ``image_ids`` and ``cams`` (N x S x S float16) of the kept images, and
    ``cams_<method>`` of each post-hoc method (``dawsol.evaluation.posthoc``) on the same images."""
    buffer = io.BytesIO()
    extra = {f"cams_{name}": np.stack(r.scoremaps).astype(np.float16) for name, r in result.posthoc.items()}
    np.savez_compressed(
        buffer,
        image_ids=np.array(result.image_ids),
        cams=np.stack(result.scoremaps).astype(np.float16),
        **extra,
    )
    atomic_write_bytes(path, buffer.getvalue())


@torch.inference_mode()
def draw_assignments(
    model: nn.Module, da_loss: nn.Module, settings: Settings, device: torch.device, path: Path
) -> None:
    """The assigner's three sets on the first training images: universum (blue), fake (red), true target (green).

    Runs a copy of ``da_loss`` so that its anchors are not changed.
    """
    dataset = eval_dataset(settings, "train")
    batch = collate_eval([dataset[i] for i in range(min(4, len(dataset)))])
    was_training = model.training
    model.eval()
    try:
        out = model(batch["image"].to(device))
    finally:
        model.train(was_training)
    probe = copy.deepcopy(da_loss)
    assignment = probe(out.features.float(), out.pooled.float(), batch["label"].to(device), 1.0).assignment
    size = settings.data.image_size
    panels = []
    for k in range(len(batch["image_id"])):
        image = to_bgr(batch["image"][k], dataset.normalization)
        labels = assignment[k].long().cpu().numpy()
        colors = cv2.resize(ASSIGNMENT_COLORS[labels], (size, size), interpolation=cv2.INTER_NEAREST)
        scale = max(1, 192 // size)
        pair = np.concatenate([image, cv2.addWeighted(image, 0.4, colors, 0.6, 0)], axis=1)
        panels.append(cv2.resize(pair, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST))
    grid = _grid(panels, columns=2)
    legend = np.full((20, grid.shape[1], 3), 255, np.uint8)
    names = ("universum", "fake target", "true target")
    for x, name, color in zip((4, 110, 230), names, ASSIGNMENT_COLORS.tolist(), strict=True):
        cv2.putText(legend, name, (x, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, tuple(color), 1, cv2.LINE_AA)
    atomic_write_bytes(path, encode_png(np.concatenate([grid, legend])))
