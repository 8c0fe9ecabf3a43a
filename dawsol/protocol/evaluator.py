"""The standalone evaluator behind ``dawsol metrics``: a split's metrics from CAM files, or a baseline.

Each image is independent: images are evaluated in chunks, in this process or in a pool of
worker processes, each chunk into its own accumulators, which are then merged (counts and
histograms, so the result is exactly that of one pass). Only one CAM per worker is in memory.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from dawsol.data.groundtruth import FOREGROUND, load_mask, rescale_boxes
from dawsol.data.metadata import IMAGE_SIZES, LOCALIZATION, MASK_LOCALIZATION, read_split
from dawsol.errors import DawsolError
from dawsol.protocol.accumulators import BoxAccumulator, MaskAccumulator
from dawsol.protocol.boxes import check_boxes
from dawsol.protocol.output import DEFAULT_IOU_THRESHOLDS
from dawsol.protocol.predictions import read_predictions
from dawsol.protocol.scoremap import prepare_scoremap

log = logging.getLogger(__name__)

BASELINES = ("center", "random", "oracle")
RANDOM_MAP_SIZE = 16  # the random baseline: uniform noise on a 16 x 16 grid, bicubic to the evaluation size


@dataclass(frozen=True)
class ImageTask:
    """What one image's evaluation needs: its CAM file and its ground truth at the evaluation size."""

    image_id: str
    cam_path: Path | None  # None for a baseline
    boxes: np.ndarray | None  # K x 4 at size x size, None without box labels
    mask_paths: tuple[Path, ...] | None  # None without mask labels
    ignore_path: Path | None
    correct_class: bool | None  # predicted class == label; None without predictions


@dataclass(frozen=True)
class SplitTasks:
    """A split's image tasks and which labels it has (``mask_file`` names its mask lines)."""

    tasks: list[ImageTask]
    with_boxes: bool
    with_masks: bool
    mask_file: Path


@dataclass(frozen=True)
class ChunkSettings:
    """The settings every chunk of one split shares."""

    size: int
    cam_curve_interval: float
    iou_thresholds: tuple[int, ...]
    with_boxes: bool
    with_masks: bool
    baseline: str | None


def center_scoremap(size: int) -> np.ndarray:
    """The center baseline: an isotropic Gaussian (sigma = size / 4) centred in the image, normalised.

    Thresholding it gives centred squares of every size, so it scores the best centred box.
    """
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
    squared = coords[None, :] ** 2 + coords[:, None] ** 2
    return prepare_scoremap(np.exp(-squared / (2 * (size / 4) ** 2)), size)


def random_scoremap(image_id: str, size: int) -> np.ndarray:
    """The random baseline: uniform noise on a ``RANDOM_MAP_SIZE`` grid seeded by the image id, resized as a CAM is.

    What a score map without any information about the image scores (as coarse as a CAM's map).
    """
    seed = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "little")
    return prepare_scoremap(np.random.default_rng(seed).random((RANDOM_MAP_SIZE, RANDOM_MAP_SIZE)), size)


def box_oracle_scoremap(boxes: np.ndarray, size: int) -> np.ndarray:
    """The box oracle: GT box k of K filled with 1 - k / K, earlier boxes on top (inclusive corners).

    Above the second level only the first box remains, so some CAM threshold recovers it exactly
    (up to the protocol's one-pixel-wider predicted boxes) even where boxes overlap.
    """
    scoremap = np.zeros((size, size), dtype=np.float64)
    for k, (x0, y0, x1, y1) in reversed(list(enumerate(boxes.tolist()))):
        scoremap[y0 : y1 + 1, x0 : x1 + 1] = 1.0 - k / len(boxes)
    return scoremap


def load_cam(image_id: str, path: Path, size: int) -> np.ndarray:
    """Read one CAM file and return its evaluated score map; DawsolError on a bad file."""
    try:
        cam = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DawsolError(f"{path}: cannot read the CAM of image {image_id!r} ({exc}); write it with np.save") from None
    if not isinstance(cam, np.ndarray) or cam.ndim != 2 or cam.size == 0:
        shape = getattr(cam, "shape", None)
        raise DawsolError(f"{path}: the CAM of image {image_id!r} has shape {shape}; save one 2-D map (H x W)")
    if not np.issubdtype(cam.dtype, np.number) or np.issubdtype(cam.dtype, np.complexfloating):
        raise DawsolError(f"{path}: the CAM of image {image_id!r} has dtype {cam.dtype}; save real numbers")
    if not np.isfinite(cam).all():
        raise DawsolError(f"{path}: the CAM of image {image_id!r} contains NaN or inf; fix the CAM computation")
    return prepare_scoremap(cam, size)


def _evaluate_chunk(
    tasks: Sequence[ImageTask], settings: ChunkSettings
) -> tuple[BoxAccumulator | None, MaskAccumulator | None, int]:
    """Accumulate a chunk of images into fresh accumulators; also return the chunk's size."""
    box = BoxAccumulator(settings.iou_thresholds, settings.cam_curve_interval) if settings.with_boxes else None
    mask = MaskAccumulator(settings.cam_curve_interval) if settings.with_masks else None
    center = center_scoremap(settings.size) if settings.baseline == "center" else None
    for task in tasks:
        if settings.baseline == "random":
            scoremap = random_scoremap(task.image_id, settings.size)
        elif settings.baseline is not None:
            scoremap = center
        else:
            scoremap = load_cam(task.image_id, task.cam_path, settings.size)
        if box is not None:
            box_map = box_oracle_scoremap(task.boxes, settings.size) if settings.baseline == "oracle" else scoremap
            box.accumulate(box_map, task.boxes, task.correct_class)
        if mask is not None:
            gt_mask = load_mask(list(task.mask_paths), task.ignore_path, settings.size)
            mask_map = (gt_mask == FOREGROUND).astype(np.float64) if settings.baseline == "oracle" else scoremap
            mask.accumulate(mask_map, gt_mask)
    return box, mask, len(tasks)


def _evaluate_chunk_star(args: tuple[Sequence[ImageTask], ChunkSettings]):
    return _evaluate_chunk(*args)


def _init_worker() -> None:
    cv2.setNumThreads(1)


def build_tasks(
    metadata_dir: Path,
    cam_dir: Path | None,
    *,
    mask_root: Path | None,
    predictions: Path | None,
    size: int,
) -> SplitTasks:
    """One task per image of the split, with its ground truth, checked up front."""
    meta = read_split(metadata_dir)
    with_boxes, with_masks = bool(meta.boxes), bool(meta.masks)
    if not meta.image_ids:
        raise DawsolError(f"{metadata_dir / 'image_ids.txt'}: no image ids; check --metadata")
    if not (with_boxes or with_masks):
        raise DawsolError(f"{metadata_dir / LOCALIZATION}: no boxes or masks; this split has no localization labels")
    mask_file = metadata_dir / (MASK_LOCALIZATION if with_boxes else LOCALIZATION)
    root = mask_root if mask_root is not None else metadata_dir.parent.parent
    predicted = None
    if predictions is not None:
        predicted = read_predictions(predictions, {metadata_dir.name: meta.image_ids})[metadata_dir.name]
    tasks = []
    for image_id in meta.image_ids:
        boxes = None
        if with_boxes:
            if image_id not in meta.boxes:
                raise DawsolError(f"{metadata_dir / LOCALIZATION}: no box for image {image_id!r}")
            if image_id not in meta.sizes:
                raise DawsolError(f"{metadata_dir / IMAGE_SIZES}: no size for image {image_id!r}")
            boxes = rescale_boxes(meta.boxes[image_id], meta.sizes[image_id], size)
            try:
                check_boxes(boxes)
            except ValueError as exc:
                raise DawsolError(f"{metadata_dir / LOCALIZATION}: image {image_id!r}: {exc}") from None
        mask_paths, ignore_path = None, None
        if with_masks:
            if image_id not in meta.masks:
                raise DawsolError(f"{mask_file}: no mask for image {image_id!r}")
            mask_paths = tuple(root / p for p in meta.masks[image_id])
            ignore = meta.ignore_masks.get(image_id)
            ignore_path = root / ignore if ignore else None
        cam_path = None
        if cam_dir is not None:
            cam_path = cam_dir / f"{image_id}.npy"
            if not cam_path.is_file():
                raise DawsolError(f"{cam_path}: no CAM for image {image_id!r}; save it as <cams>/<image_id>.npy")
        correct = None if predicted is None else predicted[image_id] == meta.labels.get(image_id)
        tasks.append(ImageTask(image_id, cam_path, boxes, mask_paths, ignore_path, correct))
    if cam_dir is not None:
        _warn_about_unused_cams(cam_dir, set(meta.image_ids), metadata_dir)
    return SplitTasks(tasks, with_boxes, with_masks, mask_file)


def _warn_about_unused_cams(cam_dir: Path, image_ids: set[str], metadata_dir: Path) -> None:
    """Log the CAM files whose image id is not in the split: they are not evaluated.

    A warning, not an error: one folder may hold the CAMs of several splits.
    """
    unused = sorted(
        path for path in cam_dir.rglob("*.npy") if path.relative_to(cam_dir).as_posix()[: -len(".npy")] not in image_ids
    )
    if unused:
        log.warning(
            "%d CAM file(s) under %s have no image in %s and are not evaluated, e.g. %s",
            len(unused),
            cam_dir,
            metadata_dir / "image_ids.txt",
            unused[0],
        )


def _chunks(tasks: list[ImageTask], size: int) -> Iterator[list[ImageTask]]:
    for start in range(0, len(tasks), size):
        yield tasks[start : start + size]


def evaluate_split(
    metadata_dir: str | Path,
    cam_dir: str | Path | None = None,
    *,
    mask_root: str | Path | None = None,
    predictions: str | Path | None = None,
    cam_curve_interval: float = 0.001,
    iou_thresholds: Sequence[int] = DEFAULT_IOU_THRESHOLDS,
    size: int = 224,
    workers: int = 1,
    baseline: str | None = None,
    progress: bool = False,
) -> tuple[BoxAccumulator | None, MaskAccumulator | None]:
    """Evaluate one split: the CAMs in ``cam_dir/<image_id>.npy``, or a ``baseline`` (center, random, oracle).

    Returns the merged box accumulator (None without box labels) and mask accumulator (None
    without mask labels). Bad input raises DawsolError naming the image id and file.
    """
    if (cam_dir is None) == (baseline is None):
        raise DawsolError("give either CAMs (--cams) or a baseline (--baseline), not both or neither")
    if baseline is not None and baseline not in BASELINES:
        raise DawsolError(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}")
    if workers < 1:
        raise DawsolError(f"--workers must be at least 1, got {workers}")
    metadata_dir = Path(metadata_dir)
    split = build_tasks(
        metadata_dir,
        Path(cam_dir) if cam_dir is not None else None,
        mask_root=Path(mask_root) if mask_root is not None else None,
        predictions=Path(predictions) if predictions is not None else None,
        size=size,
    )
    tasks = split.tasks
    settings = ChunkSettings(
        size, cam_curve_interval, tuple(iou_thresholds), split.with_boxes, split.with_masks, baseline
    )
    box = BoxAccumulator(iou_thresholds, cam_curve_interval) if split.with_boxes else None
    mask = MaskAccumulator(cam_curve_interval) if split.with_masks else None
    # Small chunks balance images of very different cost; 16 keeps the per-task overhead low on big splits.
    chunk_size = max(1, min(16, len(tasks) // (16 * workers)))
    jobs = ((chunk, settings) for chunk in _chunks(tasks, chunk_size))
    pool = multiprocessing.get_context().Pool(min(workers, len(tasks)), _init_worker) if workers > 1 else None
    with tqdm(total=len(tasks), desc="evaluating", unit="image", disable=not progress) as bar, pool or nullcontext():
        parts = pool.imap_unordered(_evaluate_chunk_star, jobs) if pool else map(_evaluate_chunk_star, jobs)
        for part_box, part_mask, count in parts:
            _merge(box, mask, part_box, part_mask)
            bar.update(count)
    if mask is not None and mask.num_foreground == 0:
        raise DawsolError(
            f"{split.mask_file}: no foreground pixel in any mask of the split; check the masks and --mask-root"
        )
    return box, mask


def _merge(
    box: BoxAccumulator | None,
    mask: MaskAccumulator | None,
    part_box: BoxAccumulator | None,
    part_mask: MaskAccumulator | None,
) -> None:
    if box is not None and part_box is not None:
        box.merge(part_box)
    if mask is not None and part_mask is not None:
        mask.merge(part_mask)
