"""``dawsol localize``: the CAM of the top classes and their boxes, drawn on your own images, and written out.

Two kinds of model: a trained cell's checkpoint (its classes are the dataset's label indices,
named by ``dataset_class_names`` where the prepared dataset is at hand), or an ImageNet-pretrained
classifier used as it is (``--imagenet <backbone>``): global average pooling and one linear layer
make any such network a CAM model, so its ImageNet head scores every pixel feature (names from
torchvision's bundled ImageNet-1k category list). Every output of one run is written beside its
path and renamed at the end (``dawsol.atomic.staged``), so a failure leaves the old ones.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image

from dawsol.atomic import atomic_write_bytes, atomic_write_text, staged
from dawsol.checkpoints.format import load_checkpoint, model_from_state, stored_settings
from dawsol.components.backbones import BACKBONES
from dawsol.config import Settings
from dawsol.data.datasets import Normalization, eval_transform
from dawsol.data.metadata import CLASS_LABELS, SPLITS, to_rgb
from dawsol.errors import DawsolError
from dawsol.evaluation.figures import encode_png, figure_threshold, predicted_boxes, tile
from dawsol.models import WSOLModel
from dawsol.models.registry import backbone, classifier_trunk, imagenet_state, normalization
from dawsol.protocol import prepare_scoremap

IMAGENET_SIZE = 224
IMAGENET_THRESHOLD = 0.2  # no validation split to choose one: the CAM paper's 20% of the peak
SUMMARY_JSON = "localization.json"  # every image's classes and boxes, one file (with SUMMARY_CSV)
SUMMARY_CSV = "localization.csv"
CSV_COLUMNS = ("image", "output", "class_index", "class_name", "probability", "x0", "y0", "x1", "y1")


@dataclass
class Localizer:
    """A CAM model with what localisation needs: its input size and normalisation, class names, a CAM threshold."""

    model: WSOLModel
    image_size: int
    normalization: Normalization
    class_names: Sequence[str] | None
    threshold: float

    def name(self, index: int) -> str:
        return self.class_names[index] if self.class_names is not None else f"class {index}"


def checkpoint_localizer(checkpoint: Path, device: torch.device, threshold: float | None) -> Localizer:
    """A trained cell's model; the threshold defaults to the one its last validation chose."""
    state = load_checkpoint(checkpoint)
    settings = stored_settings(state)
    if threshold is None:
        validated = [r["val"] for r in state["records"] if r.get("val")]
        threshold = figure_threshold(validated[-1]) if validated else 0.5
    model = model_from_state(state, device)
    names = dataset_class_names(settings)
    return Localizer(model, settings.data.image_size, normalization(settings.model.backbone), names, threshold)


def _imagenet_categories() -> list[str]:
    return list(torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def dataset_class_names(settings: Settings) -> list[str] | None:
    """The class names of a cell's dataset, None where they are not at hand (the index is shown then).

    ILSVRC's 1000 labels are ImageNet-1k's order (sorted WordNet ids), so its names are
    torchvision's categories; elsewhere a class is named by the folder its images sit in
    (CUB ``001.Black_footed_Albatross``), read from the prepared dataset's ``class_labels.txt``
    (``<data.root>/<dataset>``, relative to the working folder) when every class has one folder of
    its own; folders named by the index alone name nothing.
    """
    if settings.cell.dataset == "ilsvrc" and settings.data.num_classes == 1000:
        return _imagenet_categories()
    for split in sorted(SPLITS, key=lambda s: s != "test"):  # the test split first: every class, fewest lines
        labels = settings.dataset_dir / "metadata" / split / CLASS_LABELS
        if not labels.is_file():
            continue
        folders: dict[int, set[str]] = {}
        for line in labels.read_text().splitlines():
            image_id, _, label = line.strip().rpartition(",")
            if image_id and label.strip().isdigit():
                folders.setdefault(int(label), set()).add(PurePosixPath(image_id).parent.name)
        names = {label: next(iter(found)) for label, found in folders.items() if len(found) == 1}
        if (
            sorted(names) == list(range(settings.data.num_classes))
            and len(set(names.values())) == len(names)
            and not all(name.isdigit() for name in names.values())
        ):
            return [names[label] for label in sorted(names)]
    return None


def imagenet_localizer(name: str, device: torch.device, threshold: float | None) -> Localizer:
    """Backbone ``name``'s ImageNet-1k classifier as a CAM model, unmodified and untrained by dawsol."""
    entry = backbone(name)
    if entry.imagenet_head is None or entry.classifier_trunk is None:
        usable = ", ".join(n for n, b in BACKBONES.items() if b.classifier_trunk is not None)
        raise DawsolError(
            f"--imagenet {name}: its ImageNet head is not one linear layer on pooled trunk features (use {usable})"
        )
    full_state = imagenet_state(name)
    trunk = classifier_trunk(name, lambda net: net.load_state_dict(full_state))  # the whole network, strictly
    model = WSOLModel(trunk, 1000, name)
    weight, bias = full_state[f"{entry.imagenet_head}.weight"], full_state[f"{entry.imagenet_head}.bias"]
    model.classifier.load_state_dict({"weight": weight[:, :, None, None], "bias": bias})
    chosen = IMAGENET_THRESHOLD if threshold is None else threshold
    return Localizer(model.to(device).eval(), IMAGENET_SIZE, entry.normalization, _imagenet_categories(), chosen)


def _read_rgb(image_path: Path) -> Image.Image:
    try:
        with Image.open(image_path) as handle:
            return to_rgb(handle, image_path)
    except (OSError, ValueError, Image.DecompressionBombError):
        raise DawsolError(f"{image_path}: not a readable image") from None


def output_names(images: Sequence[Path]) -> list[str]:
    """A distinct output name per input: its stem, with its suffix where a file of the same stem sits in
    the same folder (``x.png``, ``x.jpg``: ``x_png``, ``x_jpg``), and with as many parent folders as tell
    it apart (``test/000/00004.png``, ``test/003/00004.png``: ``000_00004``, ``003_00004``); one file
    given twice keeps one name."""
    resolved = [path.resolve() for path in images]
    stems = [
        f"{path.stem}_{path.suffix.lstrip('.')}"
        if any(o != path and o.parent == path.parent and o.stem == path.stem for o in resolved)
        else path.stem
        for path in resolved
    ]
    folders = [[part.name for part in path.parents if part.name][::-1] for path in resolved]
    depth = [0] * len(images)

    def names() -> list[str]:
        return [
            "_".join([*folders[i][len(folders[i]) - depth[i] :], stems[i]]) if depth[i] else stems[i]
            for i in range(len(images))
        ]

    current = names()
    while grow := [
        i
        for i, n in enumerate(current)
        if current.count(n) > 1 and resolved.count(resolved[i]) == 1 and depth[i] < len(folders[i])
    ]:
        for i in grow:
            depth[i] += 1
        current = names()
    return current


def _csv_rows(report: Mapping[str, Any], output: str) -> list[list[Any]]:
    """``SUMMARY_CSV``'s rows of one image: one per box of each listed class (a class without a box: one, empty)."""
    rows = []
    for entry in report["top"]:
        head = [report["image"], output, entry["class_index"], entry["class_name"], f"{entry['probability']:.6f}"]
        rows += [[*head, *box] for box in entry["boxes"]] or [[*head, "", "", "", ""]]
    return rows


@torch.inference_mode()
def localize(localizer: Localizer, images: Sequence[Path], out_dir: Path, top_k: int = 1) -> list[Path]:
    """For each image: ``<name>_cam.png`` (the top class's CAM and boxes) and ``<name>.json`` (the top
    ``top_k`` classes with index, name, probability and boxes ``[x0, y0, x1, y1]`` in the image's pixels),
    ``<name>`` its stem (``output_names``: with parent folders where stems clash); and for all images
    ``localization.json`` (the same reports in one list) and ``localization.csv`` (``CSV_COLUMNS``, one
    row per box). Returns the files written.

    An unreadable image is an error before any file is written; all files are renamed into place
    together at the end, so any failure leaves the outputs of an earlier run as they were.
    """
    if not 0 <= localizer.threshold < 1:
        raise DawsolError(f"--threshold {localizer.threshold}: a CAM threshold lies in [0, 1)")
    if top_k < 1:
        raise DawsolError(f"--top-k {top_k}: at least 1")
    for image_path in images:  # every image is checked before anything is written
        _read_rgb(image_path)
    model = localizer.model
    device = next(model.parameters()).device
    transform = eval_transform(localizer.image_size, localizer.normalization)
    written, reports, rows = [], [], []
    summary = out_dir / SUMMARY_JSON
    with staged(mark=summary):
        for image_path, stem in zip(images, output_names(images), strict=True):
            picture = _read_rgb(image_path)
            out = model(transform(picture)[None].to(device))
            probabilities = torch.softmax(out.logits.float(), 1)[0]
            top = probabilities.topk(min(top_k, len(probabilities)))
            classes = top.indices.tolist()
            cams = model.wsol_cams(out.expand(len(classes)), top.indices).double().cpu().numpy()
            entries, scoremaps = [], []
            for index, probability, cam in zip(classes, top.values.tolist(), cams, strict=True):
                resized = cv2.resize(
                    prepare_scoremap(cam, localizer.image_size), picture.size, interpolation=cv2.INTER_CUBIC
                )
                scoremap = np.clip(resized, 0, 1)
                scoremaps.append(scoremap)
                boxes = predicted_boxes(scoremap, localizer.threshold)
                entries.append(
                    {
                        "class_index": index,
                        "class_name": localizer.name(index),
                        "probability": probability,
                        "boxes": [[int(v) for v in box] for box in np.asarray(boxes).reshape(-1, 4)],
                    }
                )
            caption = f"{entries[0]['class_name']} p={entries[0]['probability']:.2f}"
            original = np.ascontiguousarray(np.asarray(picture)[:, :, ::-1])
            panel = tile(original, scoremaps[0], np.zeros((0, 4), np.int64), localizer.threshold, caption)
            figure = out_dir / f"{stem}_cam.png"
            atomic_write_bytes(figure, encode_png(panel))
            report = {"image": str(image_path), "threshold": localizer.threshold, "top": entries}
            listing = out_dir / f"{stem}.json"
            atomic_write_text(listing, json.dumps(report, indent=2) + "\n")
            written += [figure, listing]
            reports.append({**report, "output": stem})
            rows += _csv_rows(report, stem)
        table = io.StringIO()
        csv.writer(table, lineterminator="\n").writerows([CSV_COLUMNS, *rows])
        atomic_write_text(out_dir / SUMMARY_CSV, table.getvalue())
        atomic_write_text(summary, json.dumps({"threshold": localizer.threshold, "images": reports}, indent=2) + "\n")
    return [*written, out_dir / SUMMARY_CSV, summary]
