"""Inference with a trained cell: the protocol's evaluation, the cell's figures, localisation of new images.

``evaluate_split`` runs a model over a split as the paper does (method.md 3.5): CAMs of the
ground-truth class, ``prepare_scoremap`` (bicubic to the evaluation size, min-max), box and
mask accumulators of ``dawsol.evaluation``, and Top-1 Cls from the model's own logits. Training
uses it for validation; ``evaluate_cell`` uses it for ``dawsol evaluate`` and writes the cell
outputs of docs/architecture.md atomically (old outputs are removed first, ``metrics.json`` is
written last). ``localize`` draws CAMs and boxes on a user's own images.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from dawsol.atomic import atomic_write_bytes, atomic_write_text
from dawsol.config import DataSettings, ModelSettings, Settings, WSOLSettings
from dawsol.da.tsa import SET_NAMES
from dawsol.errors import DawsolError
from dawsol.pipeline import evaluate_outputs

log = logging.getLogger(__name__)

SAMPLE_COUNT = 8
GT_COLOR = (0, 200, 0)  # BGR
PRED_COLOR = (0, 0, 255)
ASSIGNMENT_COLORS = np.array([[120, 60, 20], [40, 40, 230], [60, 200, 60]], dtype=np.uint8)  # T^u, T^f, T^t (BGR)


@dataclass
class SplitResult:
    """One split's metrics (the ``dawsol metrics`` object plus Top-1 Cls) and what the figures need."""

    metrics: dict[str, Any]
    box: Any
    mask: Any
    image_ids: list[str] = field(default_factory=list)
    scoremaps: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    gt_boxes: list[np.ndarray] = field(default_factory=list)


@dataclass
class AssignerCounts:
    """Where the Target Sample Assigner puts ground-truth object and background pixels.

    Counted at the feature map's resolution: a feature pixel is object (or background) when at
    least half of the mask pixels it covers are object (background); the ignore band counts for
    neither. A good assigner puts object pixels in the fake and true targets and background in
    the universum.
    """

    object: np.ndarray = field(default_factory=lambda: np.zeros(len(SET_NAMES), np.int64))
    background: np.ndarray = field(default_factory=lambda: np.zeros(len(SET_NAMES), np.int64))

    def add(self, assignment: np.ndarray, mask: np.ndarray) -> None:
        """One image: ``assignment [h, w]`` (0, 1, 2) and its mask (1 object, 0 background, 255 ignore)."""
        height, width = assignment.shape
        for counts, value in ((self.object, 1), (self.background, 0)):
            share = cv2.resize((mask == value).astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
            counts += np.bincount(assignment[share >= 0.5], minlength=len(SET_NAMES))

    def merge(self, other: AssignerCounts) -> None:
        self.object += other.object
        self.background += other.background

    def metrics(self) -> dict[str, dict[str, float]]:
        """``{object_pixels: {set: % of object pixels}, background_pixels: {...}}``."""
        return {
            f"{name}_pixels": {
                set_name: 100.0 * float(count) / max(int(counts.sum()), 1)
                for set_name, count in zip(SET_NAMES, counts.tolist(), strict=True)
            }
            for name, counts in (("object", self.object), ("background", self.background))
        }


def read_predictions(path: Path) -> dict[str, int]:
    """A separate classifier's ``image_id,predicted_label`` CSV (an optional header row is skipped)."""
    if not path.is_file():
        raise DawsolError(f"{path}: predictions file not found")
    predictions: dict[str, int] = {}
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or (number == 1 and len(row) >= 2 and not row[1].strip().lstrip("-").isdigit()):
                continue
            if len(row) < 2 or not row[1].strip().lstrip("-").isdigit():
                raise DawsolError(f"{path}:{number}: expected image_id,predicted_label, got {','.join(row)!r}")
            predictions[row[0].strip()] = int(row[1])
    return predictions


def _eval_dataset(settings: Settings, split: str, image_ids: Sequence[str] | None = None) -> Any:
    from dawsol.data.datasets import EvalDataset, read_dataset_split, sample_per_class

    mask_root = settings.data.mask_root
    if image_ids is None and split == "val" and settings.data.num_val_sample_per_class:
        meta = read_dataset_split(settings.dataset_dir, split)
        image_ids = sample_per_class(meta.image_ids, meta.labels, settings.data.num_val_sample_per_class, settings.seed)
    return EvalDataset(settings.dataset_dir, split, settings.data.image_size, mask_root, image_ids=image_ids)


def _to_bgr(image: torch.Tensor) -> np.ndarray:
    """A normalised 3 x S x S tensor back to a uint8 BGR picture."""
    from dawsol.data.datasets import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image.float().cpu() * std + mean).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(rgb[:, :, ::-1])


@torch.inference_mode()
def evaluate_split(
    model: nn.Module,
    settings: Settings,
    split: str,
    device: torch.device,
    *,
    stop: threading.Event | None = None,
    predictions: Mapping[str, int] | None = None,
    keep: int = 0,
    assigner: nn.Module | None = None,
) -> SplitResult:
    """The protocol's metrics of ``model`` on ``split``, plus ``Top-1 Cls``.

    ``predictions`` (a separate classifier's labels for every image of the split) adds the
    two-stage ``Top-1 Loc (two-stage)`` and ``Top-1 Cls (two-stage)``. ``keep`` keeps the first
    ``keep`` images, score maps and GT boxes for the figures. With a DA cell's ``assigner``
    (``TargetSampleAssigner``, anchors left unchanged), a split with masks adds ``TSA``: the share
    of object and of background pixels in each assigner set (``AssignerCounts``). A set ``stop`` event raises
    ``dawsol.train.Interrupted`` between batches. Under torchrun each rank scores its contiguous
    slice of the split and the accumulators (counts, histograms) are merged in rank order, so the
    metrics equal one process's exactly; the kept images are rank 0's (the split's first).
    """
    from dawsol import distributed
    from dawsol.data.datasets import collate_eval
    from dawsol.evaluation import BoxAccumulator, MaskAccumulator, metrics_dict, prepare_scoremap

    dataset = _eval_dataset(settings, split)
    num_images = len(dataset)
    if distributed.current().enabled:
        dataset = _eval_dataset(settings, split, image_ids=distributed.shard(list(dataset.image_ids)))
    if predictions is not None:
        missing = [i for i in dataset.image_ids if i not in predictions]
        if missing:
            raise DawsolError(f"predictions: no label for {split} image {missing[0]} ({len(missing)} missing)")
    ev = settings.eval
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=ev.batch_size, num_workers=settings.data.num_workers, collate_fn=collate_eval, shuffle=False
    )
    size = settings.data.image_size
    box = mask = two_stage = None
    assigned = AssignerCounts() if assigner is not None else None
    correct = two_stage_correct = 0
    result = SplitResult(metrics={}, box=None, mask=None)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            if stop is not None and stop.is_set():
                from dawsol.train import Interrupted

                raise Interrupted
            labels = batch["label"].to(device)
            out = model(batch["image"].to(device))
            predicted = out.logits.argmax(1)
            cams = model.cams(out.features.float(), labels).double().cpu().numpy()
            hits = (predicted == labels).cpu().tolist()
            correct += sum(hits)
            assignment = None
            if assigned is not None and any(m is not None for m in batch["mask"]):
                pixels = out.features.float().flatten(2).transpose(1, 2)
                assignment = assigner(pixels, out.pooled.float(), labels, update=False)
                assignment = assignment.view(out.features.shape[0], *out.features.shape[2:]).cpu().numpy()
            for k, image_id in enumerate(batch["image_id"]):
                scoremap = prepare_scoremap(cams[k], size)
                gt_boxes, gt_mask = batch["boxes"][k], batch["mask"][k]
                if len(gt_boxes):
                    box = box or BoxAccumulator(ev.iou_thresholds, ev.cam_curve_interval, multi_contour=True)
                    box.accumulate(scoremap, gt_boxes, correct_class=bool(hits[k]))
                    if predictions is not None:
                        second = predictions[image_id] == int(batch["label"][k])
                        two_stage_correct += second
                        two_stage = two_stage or BoxAccumulator(ev.iou_thresholds, ev.cam_curve_interval)
                        two_stage.accumulate(scoremap, gt_boxes, correct_class=second)
                if gt_mask is not None:
                    mask = mask or MaskAccumulator(ev.cam_curve_interval)
                    mask.accumulate(scoremap, gt_mask)
                    if assignment is not None:
                        assigned.add(assignment[k], gt_mask)
                if len(result.image_ids) < keep:
                    result.image_ids.append(image_id)
                    result.scoremaps.append(scoremap)
                    result.images.append(_to_bgr(batch["image"][k]))
                    result.gt_boxes.append(np.asarray(gt_boxes).reshape(-1, 4))
    finally:
        model.train(was_training)
    if distributed.current().enabled:
        parts = distributed.gather_objects((box, mask, two_stage, assigned, correct, two_stage_correct))
        box, mask, two_stage, assigned = (_merge([part[i] for part in parts]) for i in range(4))
        correct, two_stage_correct = sum(part[4] for part in parts), sum(part[5] for part in parts)
    metrics = metrics_dict(box, mask, ev.iou_thresholds)
    metrics["Top-1 Cls"] = 100.0 * correct / max(num_images, 1)
    if two_stage is not None:
        metrics["Top-1 Loc (two-stage)"] = metrics_dict(two_stage, None)["Top-1 Loc"]
        metrics["Top-1 Cls (two-stage)"] = 100.0 * two_stage_correct / max(num_images, 1)
    if assigned is not None and mask is not None:
        metrics["TSA"] = assigned.metrics()
    result.metrics, result.box, result.mask = metrics, box, mask
    return result


def _merge(accumulators: Sequence[Any]) -> Any:
    """The rank-ordered merge of the ranks' accumulators (None where a rank had no such labels)."""
    present = [a for a in accumulators if a is not None]
    if not present:
        return None
    merged = present[0]
    for other in present[1:]:
        merged.merge(other)
    return merged


# --------------------------------------------------------------------------- figures


def _overlay(image: np.ndarray, scoremap: np.ndarray) -> np.ndarray:
    heat = cv2.applyColorMap((scoremap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 0.5, heat, 0.5, 0)


def _predicted_boxes(scoremap: np.ndarray, threshold: float) -> np.ndarray:
    from dawsol.evaluation.boxes import scoremap_boxes

    return scoremap_boxes(scoremap, [threshold], multi_contour=True)[0]


def _tile(image: np.ndarray, scoremap: np.ndarray, gt: np.ndarray, threshold: float, caption: str) -> np.ndarray:
    """One panel: the CAM over the image, GT boxes in green, predicted boxes in red, scaled to >= 192 px."""
    scale = max(1, 192 // image.shape[0])
    panel = _overlay(image, scoremap)
    panel = cv2.resize(panel, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for boxes, color in ((gt, GT_COLOR), (_predicted_boxes(scoremap, threshold), PRED_COLOR)):
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


def _encode_png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def write_cams_png(path: Path, result: SplitResult, threshold: float) -> None:
    """``cams.png``: the kept images with the CAM overlay, predicted boxes at ``threshold`` and GT boxes."""
    panels = [
        _tile(image, scoremap, gt, threshold, image_id)
        for image, scoremap, gt, image_id in zip(
            result.images, result.scoremaps, result.gt_boxes, result.image_ids, strict=True
        )
    ]
    atomic_write_bytes(path, _encode_png(_grid(panels)))


def write_cam_samples(path: Path, result: SplitResult) -> None:
    """``cam_samples.npz``: ``image_ids`` and ``cams`` (N x S x S float16) of the kept images."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        image_ids=np.array(result.image_ids),
        cams=np.stack(result.scoremaps).astype(np.float16),
    )
    atomic_write_bytes(path, buffer.getvalue())


@torch.inference_mode()
def draw_assignments(
    model: nn.Module, da_loss: nn.Module, settings: Settings, device: torch.device, path: Path
) -> None:
    """The assigner's three sets on the first training images: universum (blue), fake (red), true target (green).

    Runs a copy of ``da_loss`` so that its anchors are not changed.
    """
    import copy

    from dawsol.data.datasets import collate_eval

    dataset = _eval_dataset(settings, "train")
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
        image = _to_bgr(batch["image"][k])
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
    atomic_write_bytes(path, _encode_png(np.concatenate([grid, legend])))


# --------------------------------------------------------------------------- dawsol evaluate


def _best_threshold(metrics: Mapping[str, Any]) -> float:
    """The CAM threshold the figures use: the one GT-known Loc chose, else pIoU's, else 0.5."""
    chosen = metrics.get("chosen_threshold") or {}
    for key in ("GT-known Loc", "pIoU"):
        if isinstance(chosen.get(key), int | float):
            return float(chosen[key])
    return 0.5


def evaluate_cell(
    settings: Settings, device_name: str | None = None, predictions: str | Path | None = None, tracking: bool = True
) -> dict[str, Any]:
    """``dawsol evaluate``: the last checkpoint on val and test, written to ``results/cells/<cell>/``."""
    import json

    from dawsol.evaluation import write_curves
    from dawsol.train import (
        check_compatible,
        checkpoint_path,
        load_checkpoint,
        require_prepared,
        select_device,
    )

    require_prepared(settings)
    path = checkpoint_path(settings)
    if not path.is_file():
        raise DawsolError(f"{path}: no checkpoint; run: dawsol train {settings.cell.name}")
    state = load_checkpoint(path)
    check_compatible(state, settings, path, training=False)
    if state["epoch"] < settings.train.epochs:
        raise DawsolError(
            f"{path}: training stopped at epoch {state['epoch']} of {settings.train.epochs}; "
            f"run: dawsol train {settings.cell.name}"
        )
    labels = read_predictions(Path(predictions)) if predictions is not None else None
    outputs = evaluate_outputs(settings.cell)
    for output in outputs.values():
        output.unlink(missing_ok=True)
    device = select_device(device_name or settings.train.device)
    model = model_from_state(state, device)
    assigner = _assigner_from_state(state, settings, model.feature_dim, device)

    splits: dict[str, SplitResult] = {}
    for split in ("val", "test"):
        chosen = labels if labels is not None and _covers(labels, settings, split) else None
        splits[split] = evaluate_split(
            model,
            settings,
            split,
            device,
            predictions=chosen,
            keep=SAMPLE_COUNT if split == "test" else 0,
            assigner=assigner,
        )
        log.info("%s %s: %s", settings.cell.name, split, _summary(splits[split].metrics))
    threshold = _best_threshold(splits["val"].metrics)
    cell = settings.cell
    document = {
        "cell": cell.name,
        "dataset": cell.dataset,
        "backbone": cell.backbone,
        "wsol": cell.wsol,
        "da": cell.da,
        "seed": cell.seed,
        "settings_digest": settings.digest(),
        "splits": {split: result.metrics for split, result in splits.items()},
    }
    write_curves(
        outputs["curves"],
        {split: (result.box, result.mask) for split, result in splits.items()},
        settings.eval.iou_thresholds,
    )
    write_cams_png(outputs["cams"], splits["test"], threshold)
    write_cam_samples(outputs["cam_samples"], splits["test"])
    atomic_write_text(outputs["metrics"], json.dumps(document, indent=2) + "\n")
    if tracking:
        _track_evaluation(settings, document, outputs)
    return document


def _assigner_from_state(
    state: Mapping[str, Any], settings: Settings, feature_dim: int, device: torch.device
) -> nn.Module | None:
    """A DA cell's trained Target Sample Assigner (its anchors from the checkpoint); None without one."""
    if settings.da is None or not settings.da.use_tsa or state.get("da") is None:
        return None
    from dawsol.da import DALoss

    da_loss = DALoss(settings.da, settings.data.num_classes, feature_dim)
    da_loss.load_state_dict(state["da"])
    return da_loss.assigner.to(device).eval()


def _covers(labels: Mapping[str, int], settings: Settings, split: str) -> bool:
    """Whether the predictions CSV speaks about ``split`` at all (then it must cover it fully)."""
    ids = _eval_dataset(settings, split).image_ids
    return any(i in labels for i in ids)


def _summary(metrics: Mapping[str, Any]) -> str:
    keys = ("Top-1 Cls", "MaxBoxAccV2", "GT-known Loc", "Top-1 Loc", "PxAP", "pIoU")
    return ", ".join(f"{k} {metrics[k]:.2f}" for k in keys if isinstance(metrics.get(k), int | float))


def _track_evaluation(settings: Settings, document: Mapping[str, Any], outputs: Mapping[str, Path]) -> None:
    from dawsol.tracking import CellRun

    run = CellRun.find(settings)
    for split, metrics in document["splits"].items():
        run.log_metrics(metrics, prefix=f"{split}.final.")
    for output in outputs.values():
        run.log_artifact(output, "evaluation")


# --------------------------------------------------------------------------- checkpoints for inference


def model_from_state(state: Mapping[str, Any], device: torch.device) -> nn.Module:
    """Rebuild a checkpoint's model from the settings it stores (no params.yaml needed)."""
    from dawsol.models import build_model

    tree = state["settings"]
    model_settings = ModelSettings(**{**tree["model"], "pretrained": "none"})
    wsol_tree = dict(tree["wsol"])
    wsol = WSOLSettings(method=wsol_tree.pop("method"), options=wsol_tree)
    model = build_model(model_settings, int(state["num_classes"]), wsol)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise DawsolError(
            f"checkpoint of {state['cell']}: its weights do not fit a {tree['model']['backbone']} model "
            f"({str(exc).splitlines()[0][:120]}); retrain the cell"
        ) from None
    return model.to(device).eval()


@torch.inference_mode()
def localize(
    checkpoint: Path, images: Sequence[Path], out_dir: Path, device_name: str = "auto", threshold: float | None = None
) -> list[Path]:
    """Draw the CAM of the predicted class and its boxes on each image; returns the PNGs written.

    An unreadable image is an error before any PNG is written.
    """
    from PIL import Image

    from dawsol.data.datasets import eval_transform
    from dawsol.train import load_checkpoint, select_device

    state = load_checkpoint(checkpoint)
    device = select_device(device_name)
    model = model_from_state(state, device)
    data = DataSettings(**state["settings"]["data"])
    if threshold is None:
        validated = [r["val"] for r in state["records"] if r.get("val")]
        threshold = _best_threshold(validated[-1]) if validated else 0.5
    if not 0 <= threshold < 1:
        raise DawsolError(f"--threshold {threshold}: a CAM threshold lies in [0, 1)")
    from dawsol.evaluation import prepare_scoremap

    def read_rgb(image_path: Path) -> Image.Image:
        try:
            with Image.open(image_path) as handle:
                return handle.convert("RGB")
        except (OSError, ValueError):
            raise DawsolError(f"{image_path}: not a readable image") from None

    for image_path in images:  # every image is checked before anything is written
        read_rgb(image_path)
    transform = eval_transform(data.image_size)
    written = []
    for image_path in images:
        picture = read_rgb(image_path)
        tensor = transform(picture)[None].to(device)
        out = model(tensor)
        predicted = out.logits.argmax(1)
        cam = model.cams(out.features.float(), predicted)[0].double().cpu().numpy()
        scoremap = np.clip(cv2.resize(prepare_scoremap(cam, data.image_size), picture.size, cv2.INTER_CUBIC), 0, 1)
        caption = f"class {int(predicted[0])} p={torch.softmax(out.logits.float(), 1).max().item():.2f}"
        original = np.ascontiguousarray(np.asarray(picture)[:, :, ::-1])
        panel = _tile(original, scoremap, np.zeros((0, 4), np.int64), threshold, caption)
        target = out_dir / f"{image_path.stem}_cam.png"
        atomic_write_bytes(target, _encode_png(panel))
        written.append(target)
    return written
