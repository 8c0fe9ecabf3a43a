"""The ``metrics.json`` object of a split and the curves CSV (docs/architecture.md, cell outputs)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dawsol.atomic import atomic_write_text
from dawsol.protocol.accumulators import BoxAccumulator, MaskAccumulator

DEFAULT_IOU_THRESHOLDS = (30, 50, 70)


def metrics_dict(
    box: BoxAccumulator | None,
    mask: MaskAccumulator | None,
    iou_thresholds: Sequence[int] = DEFAULT_IOU_THRESHOLDS,
) -> dict[str, Any]:
    """One split's metrics in the ``dawsol metrics`` format (percentages; None where the split has no such labels).

    ``iou_thresholds`` is used only without a box accumulator, to name the (null) BoxAcc entries.
    """
    if box is None and mask is None:
        raise ValueError("metrics need a box or a mask accumulator")
    deltas = box.iou_thresholds if box is not None else [int(d) for d in iou_thresholds]
    source = box if box is not None else mask
    result: dict[str, Any] = {
        "num_images": source.num_images,
        "cam_curve_interval": source.cam_curve_interval,
        "iou_thresholds": list(deltas),
        "MaxBoxAccV2": None,
        "BoxAcc": {str(d): None for d in deltas},
        "best_threshold": {str(d): None for d in deltas},
        "MaxBoxAcc": None,
        "GT-known Loc": None,
        "Top-1 Loc": None,
        "PxAP": None,
        "pIoU": None,
        "chosen_threshold": {"MaxBoxAcc": None, "GT-known Loc": None, "Top-1 Loc": None, "pIoU": None},
    }
    if box is not None:
        boxes = box.compute()
        result["BoxAcc"] = {str(d): v for d, v in boxes["BoxAcc"].items()}
        result["best_threshold"] = {str(d): v for d, v in boxes["best_threshold"].items()}
        for key in ("MaxBoxAccV2", "MaxBoxAcc", "GT-known Loc", "Top-1 Loc"):
            result[key] = boxes[key]
        result["chosen_threshold"].update(boxes["chosen_threshold"])
    if mask is not None:
        masks = mask.compute()
        result["PxAP"] = masks["PxAP"]
        result["pIoU"] = masks["pIoU"]
        result["chosen_threshold"]["pIoU"] = masks["pIoU_threshold"]
    return result


def write_metrics(path: str | Path, metrics: Mapping[str, Any]) -> None:
    """Write a metrics object as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")


# the metrics a user compares across cells, in the order of the report's tables
HEADLINE_METRICS = ("Top-1 Cls", "Top-1 Loc", "GT-known Loc", "MaxBoxAccV2", "PxAP", "pIoU")


def headline_metrics(document: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``headline.json``: per split of a cell's ``metrics.json`` object, its ``HEADLINE_METRICS`` that have a value.

    DVC shows these as the cell's metrics (one column each); thresholds, counts and the post-hoc
    maps stay in ``metrics.json`` (docs/architecture.md, cell outputs).
    """
    return {
        split: {name: metrics[name] for name in HEADLINE_METRICS if isinstance(metrics.get(name), int | float)}
        for split, metrics in document["splits"].items()
    }


def write_headline(path: str | Path, document: Mapping[str, Any]) -> None:
    """Write ``headline_metrics(document)`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(headline_metrics(document), indent=2) + "\n")


def write_curves(
    path: str | Path,
    splits: Mapping[str, tuple[BoxAccumulator | None, MaskAccumulator | None]],
    iou_thresholds: Sequence[int] = DEFAULT_IOU_THRESHOLDS,
) -> None:
    """Write one kind of map's curves CSV (``curves_text``)."""
    atomic_write_text(path, curves_text(splits, iou_thresholds))


def write_posthoc_curves(
    path: str | Path,
    methods: Mapping[str, Mapping[str, tuple[BoxAccumulator | None, MaskAccumulator | None]]],
    iou_thresholds: Sequence[int] = DEFAULT_IOU_THRESHOLDS,
) -> None:
    """The curves of several kinds of map in one CSV: ``method,`` then ``curves_text``'s columns.

    With no method the file holds the header alone, so its path always exists.
    """
    lines = ["method," + curves_text({}, iou_thresholds).rstrip("\n")]
    for method, splits in methods.items():
        body = curves_text(splits, iou_thresholds).splitlines()[1:]
        lines += [f"{method},{line}" for line in body]
    atomic_write_text(path, "\n".join(lines) + "\n")


def curves_text(
    splits: Mapping[str, tuple[BoxAccumulator | None, MaskAccumulator | None]],
    iou_thresholds: Sequence[int] = DEFAULT_IOU_THRESHOLDS,
) -> str:
    """The CSV ``split,threshold,BoxAcc_<d>...,precision,recall,IoU``: one row per CAM threshold per split.

    The BoxAcc columns follow the box accumulators' IoU thresholds (``iou_thresholds`` when there
    is none); a metric a split lacks is left empty.
    """
    boxes = [box for box, _ in splits.values() if box is not None]
    deltas = boxes[0].iou_thresholds if boxes else [int(d) for d in iou_thresholds]
    if any(box.iou_thresholds != deltas for box in boxes):
        raise ValueError("every split's box accumulator must use the same IoU thresholds")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["split", "threshold", *(f"BoxAcc_{d}" for d in deltas), "precision", "recall", "IoU"])
    for split, (box, mask) in splits.items():
        source = box if box is not None else mask
        if source is None:
            continue
        curves = box.compute()["curves"] if box is not None else None
        pixels = mask.compute() if mask is not None else None
        for i, threshold in enumerate(source.cam_thresholds):
            row: list[Any] = [split, repr(threshold)]
            row += [repr(float(curves[d][i])) if curves else "" for d in deltas]
            row += [repr(float(pixels[k][i])) if pixels else "" for k in ("precision", "recall", "IoU")]
            writer.writerow(row)
    return buffer.getvalue()
