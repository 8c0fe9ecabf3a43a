"""The no-model baselines of a dataset's table: the centre and random maps on its test split (what a number is worth).

They are evaluated where the test split is prepared, at the cells' image size and CAM thresholds
(``dawsol metrics --baseline``), and kept twice: in ``runs/baselines/<dataset>/`` under a key of the
split's metadata and those settings, so a second report (ILSVRC's 50,000 test images) does not
evaluate again, and as a result, ``results/baselines/<dataset>.json`` (``layout.baselines_path``),
the same bytes while nothing changes. A report without the data (a fresh clone) reads that file,
so its table keeps the rows it cannot recompute (docs/pipeline.md, "`dawsol report` on a fresh clone").
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

from dawsol.atomic import atomic_write_text, unstaged
from dawsol.config import Settings, tree_digest
from dawsol.errors import DawsolError
from dawsol.files import folder_digests
from dawsol.layout import RUNS_DIR, baselines_path, split_file
from dawsol.protocol import metrics_dict
from dawsol.protocol.evaluator import evaluate_split

log = logging.getLogger(__name__)
BASELINES = ("center", "random")


class TableBaselines(NamedTuple):
    """The baselines of one table (baseline -> its ``metrics_dict``; empty where there are none) and why none."""

    metrics: dict[str, dict[str, Any]]
    missing: str = ""


def table_baselines(settings: Settings) -> TableBaselines:
    """The baselines of the table of ``settings``' dataset: evaluated (and written to ``results/baselines/``) where
    its test split is prepared, read from that file where it is not, none (saying why) where neither is there."""
    dataset = settings.cell.dataset
    path = baselines_path(dataset)
    unprepared = missing_test_split(settings)
    if not unprepared:
        metrics = evaluate_baselines(settings)
        record = {
            "dataset": dataset,
            "settings": _settings(settings),
            # the split they were evaluated on: the sha256 of each metadata file
            "test_metadata": folder_digests(split_file(settings.dataset_dir, "test").parent),
            "baselines": metrics,
        }
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        return TableBaselines(metrics)
    if not path.is_file():
        return TableBaselines({}, f"no baseline rows: {unprepared}")
    record = _read(path, dataset)
    if record["settings"] != _settings(settings):
        return TableBaselines(
            {},
            f"no baseline rows: {path.as_posix()} holds them at {_describe(record['settings'])}, "
            f"not the cells' {_describe(_settings(settings))}, and {unprepared}",
        )
    log.info("report: the %s baseline rows from %s (%s)", dataset, path.as_posix(), unprepared)
    return TableBaselines(record["baselines"])


def missing_test_split(settings: Settings) -> str:
    """Why the prepared test split of ``settings``' dataset is not there, and what makes it; "" where it is."""
    metadata = split_file(settings.dataset_dir, "test").parent
    if metadata.is_dir():
        return ""
    return f"{metadata.as_posix()} is missing (run `dawsol prepare {settings.cell.dataset}`)"


def _settings(settings: Settings) -> dict[str, Any]:
    """The settings the baselines' numbers depend on, besides the test split."""
    return {
        "image_size": settings.data.image_size,
        "cam_curve_interval": settings.eval.cam_curve_interval,
        "iou_thresholds": list(settings.eval.iou_thresholds),
    }


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in values.items())


def _read(path: Path, dataset: str) -> dict[str, Any]:
    """A ``results/baselines/<dataset>.json`` record, or a DawsolError naming the file."""
    try:
        record = json.loads(path.read_text())
        if not isinstance(record["settings"], dict):
            raise TypeError("settings is not an object")
        if not all(isinstance(record["baselines"][name], dict) for name in BASELINES):
            raise TypeError("a baseline is not an object")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DawsolError(
            f"{path}: not a baselines record ({exc!r}); restore it (`git checkout {path.as_posix()}`) "
            f"or run `dawsol prepare {dataset}` and report again"
        ) from None
    return record


def evaluate_baselines(settings: Settings) -> dict[str, dict[str, Any]]:
    """The centre and random baselines on the test split of ``settings``' dataset, at the cells' image size and CAM
    thresholds, from ``runs/baselines/<dataset>/`` where they were evaluated before under the same key."""
    metadata = split_file(settings.dataset_dir, "test").parent
    mask_root = settings.data.mask_root
    ev = settings.eval
    results = {}
    for name in BASELINES:
        key = tree_digest(
            {
                "baseline": name,
                "metadata": folder_digests(metadata),
                "size": settings.data.image_size,
                "interval": ev.cam_curve_interval,
                "iou": list(ev.iou_thresholds),
                "mask_root": mask_root,
            }
        )
        cached = RUNS_DIR / "baselines" / settings.cell.dataset / f"{name}-{key}.json"
        if cached.is_file():
            results[name] = json.loads(cached.read_text())
            continue
        box, mask = evaluate_split(
            metadata,
            mask_root=mask_root,
            cam_curve_interval=ev.cam_curve_interval,
            iou_thresholds=ev.iou_thresholds,
            size=settings.data.image_size,
            workers=ev.workers,
            baseline=name,
        )
        results[name] = metrics_dict(box, mask, ev.iou_thresholds)
        with unstaged():  # kept even if the report fails later
            atomic_write_text(cached, json.dumps(results[name]))
    return results
