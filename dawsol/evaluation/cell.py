"""``dawsol evaluate``: a trained cell's last checkpoint on val and test, written to ``results/cells/<cell>/``.

The outputs of docs/architecture.md ("Cell outputs") are written once every split is scored,
each beside its path, and renamed together at the end (``dawsol.atomic.staged``): a failure
before then (a bad device, a bad checkpoint, a full disk, a kill) leaves the old outputs as they
were. During the renames the old ``metrics.json`` is removed first and the new one (with the code
version that computed it) renamed last, so a ``metrics.json`` always belongs to the files beside it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dawsol.atomic import atomic_write_text, remove_leftovers, staged
from dawsol.checkpoints.format import assigner_from_state, model_from_state, trained_checkpoint
from dawsol.components.extractors import EXTRACTORS
from dawsol.config import Settings
from dawsol.data.datasets import read_dataset_split
from dawsol.evaluation.figures import figure_threshold, write_cam_samples, write_cams_png
from dawsol.evaluation.posthoc import target_layer
from dawsol.evaluation.scoring import SplitResult, check_split, eval_dataset, score_split
from dawsol.layout import OWN_MAPS, evaluate_outputs, require_prepared, timing_path
from dawsol.models import WSOLModel
from dawsol.protocol import write_curves, write_posthoc_curves
from dawsol.protocol.output import write_headline
from dawsol.protocol.predictions import read_predictions
from dawsol.provenance import code_version
from dawsol.runtime import select_device
from dawsol.tracking import CellRun

log = logging.getLogger(__name__)

SAMPLE_COUNT = 8
SPLITS = ("val", "test")


def evaluate_cell(
    settings: Settings, device_name: str | None = None, predictions: str | Path | None = None, tracking: bool = True
) -> dict[str, Any]:
    """The cell's metrics on val and test (``metrics.json``), its curves and CAM figures; returns the document."""
    require_prepared(settings)
    for split in SPLITS:
        check_split(settings, split)
    state = trained_checkpoint(settings)
    labels: dict[str, dict[str, int]] = {}
    if predictions is not None:
        every = {split: read_dataset_split(settings.dataset_dir, split).image_ids for split in SPLITS}
        scored = {split: list(eval_dataset(settings, split).image_ids) for split in SPLITS}
        labels = read_predictions(Path(predictions), every, scored)
    device = select_device(device_name or settings.train.device)
    model = model_from_state(state, device)
    assigner = assigner_from_state(state, settings, model.feature_dim, device)

    splits: dict[str, SplitResult] = {}
    for split in SPLITS:
        splits[split] = score_split(
            model,
            settings,
            split,
            device,
            predictions=labels.get(split),
            keep=SAMPLE_COUNT if split == "test" else 0,
            assigner=assigner,
            posthoc=settings.eval.cam_methods,
        )
        log.info("%s %s: %s", settings.cell.name, split, _summary(splits[split].metrics))
        for name, extracted in splits[split].posthoc.items():
            log.info("%s %s %s: %s", settings.cell.name, split, name, _summary(extracted.metrics))
    outputs = evaluate_outputs(settings.cell)
    remove_leftovers(outputs.values())  # what a killed evaluation left, never trusted by anything
    threshold = figure_threshold(splits["val"].metrics)
    cell = settings.cell
    document = {
        **cell.record(),
        "settings_digest": settings.digest(),
        "code": {"trained": state.get("code"), "evaluated": code_version()},
        **({"imported": state["imported"]} if state.get("imported") else {}),
        "splits": {split: result.metrics for split, result in splits.items()},
        "extractors": _extractor_blocks(settings, model, splits),
    }
    seconds = {  # a measurement of this machine: kept out of metrics.json, whose bytes a rerun reproduces
        OWN_MAPS: {split: result.seconds_per_image for split, result in splits.items()},
        **{
            name: {split: r.posthoc[name].seconds_per_image for split, r in splits.items()}
            for name in splits["test"].posthoc
        },
    }
    with staged(mark=outputs["metrics"]):  # metrics.json, the mark of a finished evaluation, comes last
        _write_outputs(outputs, document, splits, settings, threshold)
    timing = timing_path(cell)
    timing.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(timing, json.dumps({"cell": cell.name, "seconds_per_image": seconds}, indent=2) + "\n")
    if tracking:
        _track_evaluation(settings, document, outputs, state.get("mlflow_run_id"))
    return document


def _write_outputs(
    outputs: Mapping[str, Path],
    document: Mapping[str, Any],
    splits: Mapping[str, SplitResult],
    settings: Settings,
    threshold: float,
) -> None:
    """The cell's curves, CAM figures and, last, ``metrics.json``."""
    write_curves(
        outputs["curves"],
        {split: (result.box, result.mask) for split, result in splits.items()},
        settings.eval.iou_thresholds,
    )
    write_posthoc_curves(
        outputs["posthoc_curves"],
        {
            name: {split: (result.posthoc[name].box, result.posthoc[name].mask) for split, result in splits.items()}
            for name in splits["test"].posthoc
        },
        settings.eval.iou_thresholds,
    )
    write_cams_png(outputs["cams"], splits["test"], threshold)
    write_cam_samples(outputs["cam_samples"], splits["test"])
    write_headline(outputs["headline"], document)
    atomic_write_text(outputs["metrics"], json.dumps(document, indent=2) + "\n")


def _extractor_blocks(settings: Settings, model: WSOLModel, splits: Mapping[str, SplitResult]) -> dict[str, Any]:
    """``metrics.json``'s ``extractors``: per post-hoc method its settings and its val and test metrics."""
    if not splits["test"].posthoc:
        return {}
    layer = target_layer(model, settings.eval.target_layer)
    blocks = {}
    for name in splits["test"].posthoc:
        library = EXTRACTORS[name].library
        every_bias_layer = library is not None and library.all_bias_layers  # FullGrad reads no target layer
        blocks[name] = {
            "target_layer": None if every_bias_layer else layer.name,
            "target_module": None if every_bias_layer else layer.path,
            "splits": {split: result.posthoc[name].metrics for split, result in splits.items()},
        }
    return blocks


def _summary(metrics: Mapping[str, Any]) -> str:
    keys = ("Top-1 Cls", "MaxBoxAccV2", "GT-known Loc", "Top-1 Loc", "PxAP", "pIoU")
    return ", ".join(f"{k} {metrics[k]:.2f}" for k in keys if isinstance(metrics.get(k), int | float))


def _track_evaluation(
    settings: Settings, document: Mapping[str, Any], outputs: Mapping[str, Path], run_id: str | None
) -> None:
    """The final metrics, code tags, evaluated splits (dataset inputs) and outputs, into the run that trained
    the cell (``run_id``, the checkpoint's) or, for an imported cell, a run of its own, then ended."""
    run = CellRun.find(settings, run_id)
    run.log_dataset(settings, "val", "validation")  # again for a trained cell: MLflow keeps one input
    run.log_dataset(settings, "test", "test")
    for split, metrics in document["splits"].items():
        run.log_metrics(metrics, prefix=f"{split}.final.")
    for name, block in document["extractors"].items():
        for split, metrics in block["splits"].items():
            run.log_metrics(metrics, prefix=f"{name}.{split}.final.")
    run.set_code_tags(document["code"]["evaluated"], prefix="evaluated_")
    if document.get("imported"):
        run.set_tag("imported", "true")
        run.set_tag("imported_sha256", str(document["imported"].get("sha256")))
    for output in outputs.values():
        run.log_artifact(output, "evaluation")
    if run.created:
        run.finish()
