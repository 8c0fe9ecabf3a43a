"""A model on a split under the protocol: score maps, box and mask accumulators, Top-1 Cls, the assigner's shares.

``score_split`` runs a model over a split as the paper does (docs/method.md section 3.5): CAMs
of the ground-truth class, ``prepare_scoremap`` (bicubic to the evaluation size, min-max), the
box and mask accumulators of ``dawsol.protocol`` (docs/protocol.md section 2), and Top-1 Cls
from the model's own logits. Training's validation and ``dawsol evaluate`` both use it; the
latter also scores post-hoc maps of the same model (``dawsol.evaluation.posthoc``, docs/posthoc.md) in the
same pass, each with its own accumulators.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from dawsol import distributed
from dawsol.config import Settings
from dawsol.da.tsa import SET_NAMES
from dawsol.data.datasets import EvalDataset, collate_eval, read_dataset_split, sample_per_class, to_bgr
from dawsol.data.metadata import CLASS_LABELS
from dawsol.errors import DawsolError
from dawsol.evaluation.posthoc import extractor, score_maps, target_layer
from dawsol.models.registry import normalization
from dawsol.protocol import BoxAccumulator, MaskAccumulator, metrics_dict, prepare_scoremap
from dawsol.runtime import Interrupted

log = logging.getLogger(__name__)


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
    # post-hoc maps of the same model (method -> its metrics, accumulators and kept score maps)
    posthoc: dict[str, SplitResult] = field(default_factory=dict)
    # wall-clock seconds per image of making the score maps (the CAM's: the model's forward pass included)
    seconds_per_image: float = float("nan")


@dataclass
class _Scorer:
    """One kind of map's accumulators over a split."""

    box: Any = None
    mask: Any = None
    kept: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0  # making the score maps


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


def check_split(settings: Settings, split: str) -> None:
    """What a run reads of ``split`` before its first step: a split with images, every label in
    ``[0, data.num_classes)``; a DawsolError naming the file and the image otherwise."""
    meta = read_dataset_split(settings.dataset_dir, split)
    labels_file = settings.dataset_dir / "metadata" / split / CLASS_LABELS
    if not meta.image_ids:
        raise DawsolError(f"{labels_file}: the {split} split has no image; run: dawsol prepare {settings.cell.dataset}")
    classes = settings.data.num_classes
    for line, image_id in enumerate(meta.image_ids, start=1):
        label = meta.labels.get(image_id)
        if label is not None and not 0 <= label < classes:
            raise DawsolError(
                f"{labels_file}: image {image_id} has label {label}, outside 0..{classes - 1} "
                f"(data.num_classes {classes}; near line {line})"
            )


def eval_dataset(settings: Settings, split: str, image_ids: Sequence[str] | None = None) -> EvalDataset:
    """The cell's evaluation images of ``split`` (val: ``num_val_sample_per_class`` per class when set)."""
    mask_root = settings.data.mask_root
    if image_ids is None and split == "val" and settings.data.num_val_sample_per_class:
        meta = read_dataset_split(settings.dataset_dir, split)
        image_ids = sample_per_class(meta.image_ids, meta.labels, settings.data.num_val_sample_per_class, settings.seed)
    return EvalDataset(
        settings.dataset_dir,
        split,
        settings.data.image_size,
        mask_root,
        image_ids=image_ids,
        normalization=normalization(settings.model.backbone),
    )


def score_split(
    model: nn.Module,
    settings: Settings,
    split: str,
    device: torch.device,
    *,
    stop: threading.Event | None = None,
    predictions: Mapping[str, int] | None = None,
    keep: int = 0,
    assigner: nn.Module | None = None,
    posthoc: Sequence[str] = (),
) -> SplitResult:
    """The protocol's metrics of ``model`` on ``split``, plus ``Top-1 Cls``.

    ``predictions`` (a separate classifier's labels for every image of the split) adds the
    two-stage ``Top-1 Loc (two-stage)`` and ``Top-1 Cls (two-stage)``. ``keep`` keeps the first
    ``keep`` images, score maps and GT boxes for the figures. With a DA cell's ``assigner``
    (``TargetSampleAssigner``, anchors left unchanged), a split with masks adds ``TSA``: the share
    of object and of background pixels in each assigner set (``AssignerCounts``). ``posthoc``
    names extractors of ``dawsol.evaluation.posthoc`` (other than ``cam``) scored on the same batches with
    ``settings.eval.target_layer``; their results are ``result.posthoc[name]`` (Top-1 from the
    same logits). A set ``stop`` event raises ``Interrupted`` between batches. Under torchrun
    each rank scores its contiguous slice of the split and the accumulators (counts, histograms)
    are merged in rank order, so the metrics equal one process's exactly; the kept images are
    rank 0's (the split's first).
    """
    dataset = eval_dataset(settings, split)
    num_images = len(dataset)
    if distributed.current().enabled:
        dataset = eval_dataset(settings, split, image_ids=distributed.shard(list(dataset.image_ids)))
    if predictions is not None:
        missing = [i for i in dataset.image_ids if i not in predictions]
        if missing:
            raise DawsolError(f"predictions: no prediction for {split} image {missing[0]!r} ({len(missing)} missing)")
    ev = settings.eval
    extra = [name for name in posthoc if name != "cam"]
    extractors = {name: extractor(name, channel_batch_size=ev.channel_batch_size) for name in extra}
    if extra:
        target_layer(model, ev.target_layer)  # a bad layer name fails before the first batch
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=ev.batch_size, num_workers=settings.data.num_workers, collate_fn=collate_eval, shuffle=False
    )
    size = settings.data.image_size
    scorers = {name: _Scorer() for name in ["cam", *extra]}
    two_stage = None
    assigned = AssignerCounts() if assigner is not None else None
    correct = two_stage_correct = 0
    result = SplitResult(metrics={}, box=None, mask=None)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            if stop is not None and stop.is_set():
                raise Interrupted
            labels = batch["label"].to(device)
            images = batch["image"].to(device)
            started = time.perf_counter()
            with torch.inference_mode():
                out = model(images)
                predicted = out.logits.argmax(1)
                maps = {"cam": [prepare_scoremap(c, size) for c in model.wsol_cams(out, labels).double().cpu().numpy()]}
                scorers["cam"].seconds += time.perf_counter() - started
                assignment = None
                if assigned is not None and any(m is not None for m in batch["mask"]):
                    pixels = out.features.float().flatten(2).transpose(1, 2)
                    assignment = assigner(pixels, out.pooled.float(), labels, update=False)
                    assignment = assignment.view(out.features.shape[0], *out.features.shape[2:]).cpu().numpy()
            for name, extract in extractors.items():
                started = time.perf_counter()
                raw = extract(model, images, labels, ev.target_layer)
                maps[name] = score_maps(name, raw, tuple(images.shape[2:]), size)
                scorers[name].seconds += time.perf_counter() - started
            hits = (predicted == labels).cpu().tolist()
            correct += sum(hits)
            for k, image_id in enumerate(batch["image_id"]):
                gt_boxes, gt_mask = batch["boxes"][k], batch["mask"][k]
                for name, scorer in scorers.items():
                    scoremap = maps[name][k]
                    if len(gt_boxes):
                        scorer.box = scorer.box or BoxAccumulator(
                            ev.iou_thresholds, ev.cam_curve_interval, multi_contour=True
                        )
                        scorer.box.accumulate(scoremap, gt_boxes, correct_class=bool(hits[k]))
                    if gt_mask is not None:
                        scorer.mask = scorer.mask or MaskAccumulator(ev.cam_curve_interval)
                        scorer.mask.accumulate(scoremap, gt_mask)
                    if len(scorer.kept) < keep:
                        scorer.kept.append(scoremap)
                if len(gt_boxes) and predictions is not None:
                    second = predictions[image_id] == int(batch["label"][k])
                    two_stage_correct += second
                    two_stage = two_stage or BoxAccumulator(ev.iou_thresholds, ev.cam_curve_interval)
                    two_stage.accumulate(maps["cam"][k], gt_boxes, correct_class=second)
                if gt_mask is not None and assignment is not None:
                    assigned.add(assignment[k], gt_mask)
                if len(result.image_ids) < keep:
                    result.image_ids.append(image_id)
                    result.images.append(to_bgr(batch["image"][k], dataset.normalization))
                    result.gt_boxes.append(np.asarray(gt_boxes).reshape(-1, 4))
    finally:
        model.train(was_training)
    names = list(scorers)
    if distributed.current().enabled:
        local = [(scorers[n].box, scorers[n].mask) for n in names]
        parts = distributed.gather_objects((local, two_stage, assigned, correct, two_stage_correct))
        for i, name in enumerate(names):
            scorers[name].box = _merge([part[0][i][0] for part in parts])
            scorers[name].mask = _merge([part[0][i][1] for part in parts])
        two_stage, assigned = (_merge([part[i] for part in parts]) for i in (1, 2))
        correct, two_stage_correct = sum(part[3] for part in parts), sum(part[4] for part in parts)
    for name in names:
        scorer = scorers[name]
        metrics = metrics_dict(scorer.box, scorer.mask, ev.iou_thresholds)
        metrics["Top-1 Cls"] = 100.0 * correct / max(num_images, 1)
        seconds_per_image = scorer.seconds / max(len(dataset), 1)  # this process's images
        if name == "cam":
            if two_stage is not None:
                metrics["Top-1 Loc (two-stage)"] = metrics_dict(two_stage, None)["Top-1 Loc"]
                metrics["Top-1 Cls (two-stage)"] = 100.0 * two_stage_correct / max(num_images, 1)
            if assigned is not None and scorer.mask is not None:
                metrics["TSA"] = assigned.metrics()
            result.metrics, result.box, result.mask, result.scoremaps = metrics, scorer.box, scorer.mask, scorer.kept
            result.seconds_per_image = seconds_per_image
        else:
            result.posthoc[name] = SplitResult(
                metrics,
                scorer.box,
                scorer.mask,
                result.image_ids,
                scorer.kept,
                result.images,
                result.gt_boxes,
                seconds_per_image=seconds_per_image,
            )
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
