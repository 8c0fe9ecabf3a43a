"""The report's figures: CAMs side by side, BoxAcc and pixel precision-recall curves, training curves."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dawsol.atomic import atomic_path
from dawsol.config import Cell
from dawsol.data.groundtruth import load_mask, rescale_boxes
from dawsol.data.metadata import read_split
from dawsol.errors import DawsolError
from dawsol.layout import evaluate_outputs
from dawsol.report.tables import EXTRACTOR_NAMES

TRAIN_SERIES = ("loss", "loss_c", "loss_d", "loss_u", "train_acc")
VAL_SERIES = ("MaxBoxAccV2", "PxAP")
MAX_IMAGES = 6


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _note(fig, note: str) -> None:
    """Write ``note`` (what the figure lacks, and why) under the figure."""
    if note:
        fig.text(0.5, 0, textwrap.fill(note, 110), ha="center", va="top", fontsize=8, color="firebrick")


def save_note(path: Path, note: str) -> None:
    """A figure of nothing but ``note``, where nothing could be drawn and no figure was there before."""
    fig = _pyplot().figure(figsize=(7, 0.6))
    _note(fig, note)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def read_curves(cells: Sequence[Cell], cells_dir: Path, split: str = "test") -> pd.DataFrame:
    """The curves CSVs of ``cells`` for one split, with ``method``/``backbone``/``seed`` columns."""
    frames = []
    for cell in cells:
        path = evaluate_outputs(cell, cells_dir)["curves"]
        if not path.is_file():
            raise DawsolError(f"{path}: missing (run `dawsol evaluate {cell.name}` first)")
        frame = pd.read_csv(path)
        frame = frame[frame["split"] == split].drop(columns="split")
        frames.append(frame.assign(backbone=cell.backbone, method=cell.method, seed=cell.seed))
    return pd.concat(frames, ignore_index=True)


def mean_curves(curves: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (backbone, method): every curve column averaged over seeds at each threshold."""
    values = [c for c in curves.columns if c not in ("backbone", "method", "seed", "threshold")]
    out = {}
    for key, group in curves.groupby(["backbone", "method"], sort=False):
        out[key] = group.groupby("threshold", sort=True)[values].mean().reset_index()
    return out


def plot_box_curves(
    curves: Mapping[tuple[str, str], pd.DataFrame], labels: Mapping[tuple[str, str], str], path: Path
) -> None:
    """BoxAcc vs CAM threshold, one panel per IoU threshold, one line per method."""
    plt = _pyplot()
    columns = sorted(
        {c for frame in curves.values() for c in frame.columns if c.startswith("BoxAcc_") and frame[c].notna().any()},
        key=lambda c: int(c.split("_")[1]),
    )
    fig, axes = plt.subplots(1, max(len(columns), 1), figsize=(4.2 * max(len(columns), 1), 3.4), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=False):
        for key, frame in curves.items():
            ax.plot(frame["threshold"], frame[column], label=labels[key])
        ax.set(title=f"IoU ≥ {column.split('_')[1]}%", xlabel="CAM threshold", ylabel="BoxAcc (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
    if not columns:
        axes[0][0].text(0.5, 0.5, "no box annotations", ha="center", va="center")
    axes[0][0].legend(fontsize=7)
    _save(fig, path)


def plot_pixel_pr(
    curves: Mapping[tuple[str, str], pd.DataFrame], labels: Mapping[tuple[str, str], str], path: Path
) -> None:
    """Pixel precision vs recall (the PxAP curve), one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4))
    drawn = False
    for key, frame in curves.items():
        if "precision" in frame and frame["precision"].notna().any():
            ax.plot(frame["recall"], frame["precision"], label=labels[key])
            drawn = True
    ax.set(xlabel="recall", ylabel="precision", title="Pixel precision-recall")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no mask annotations", ha="center", va="center", transform=ax.transAxes)
    _save(fig, path)


def read_train_logs(cells: Sequence[Cell], runs_dir: Path) -> pd.DataFrame:
    """The cells' ``train_log.jsonl`` rows with ``val_<metric>`` columns and cell keys."""
    rows = []
    for cell in cells:
        path = runs_dir / cell.name / "train_log.jsonl"
        if not path.is_file():
            raise DawsolError(f"{path}: missing (run `dawsol train {cell.name}` first)")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise DawsolError(f"{path}:{number}: not JSON; re-run `dawsol train {cell.name}`") from None
            row = {k: entry.get(k) for k in ("epoch", *TRAIN_SERIES)}
            val = entry.get("val") or {}
            row.update({f"val_{m}": val.get(m) for m in VAL_SERIES})
            rows.append({**row, "backbone": cell.backbone, "method": cell.method, "seed": cell.seed})
    columns = ["epoch", *TRAIN_SERIES, *(f"val_{m}" for m in VAL_SERIES), "backbone", "method", "seed"]
    frame = pd.DataFrame(rows, columns=columns)  # no rows where every cell was imported
    numeric = [c for c in frame.columns if c not in ("backbone", "method")]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    return frame


def plot_training(logs: pd.DataFrame, labels: Mapping[tuple[str, str], str], path: Path, note: str = "") -> None:
    """Per-epoch losses, training accuracy and validation metrics, mean over seeds per method; ``note`` says
    which cells' logs are missing."""
    plt = _pyplot()
    series = [*TRAIN_SERIES, *(f"val_{m}" for m in VAL_SERIES)]
    titles = {
        "loss": "total loss",
        "loss_c": "L_c",
        "loss_d": "L_d",
        "loss_u": "L_u",
        "train_acc": "train accuracy (%)",
    }
    cols = 4
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, series, strict=False):
        for key, group in logs.groupby(["backbone", "method"], sort=False):
            mean = group.groupby("epoch")[name].mean().dropna()
            if not mean.empty:
                ax.plot(
                    mean.index, mean.values, marker="o" if name.startswith("val_") else None, ms=3, label=labels[key]
                )
        ax.set(title=titles.get(name, name.replace("val_", "val ") + " (%)"), xlabel="epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")
    if not logs.empty:
        axes[0][0].legend(fontsize=7)
    _note(fig, note)
    _save(fig, path)


def plot_cams(
    cells: Sequence[Cell],
    labels: Sequence[str],
    cells_dir: Path,
    dataset_dir: Path,
    mask_root: Path | None,
    path: Path,
    note: str = "",
) -> None:
    """Each method's CAM (one row per cell, and one per post-hoc map a cell has) on the same test images,
    with the ground truth; ``note`` says which methods' samples are missing."""
    import cv2

    if not cells:
        raise ValueError("plot_cams needs at least one cell with CAM samples")
    plt = _pyplot()
    samples, row_labels = [], []
    for cell, label in zip(cells, labels, strict=True):
        npz = evaluate_outputs(cell, cells_dir)["cam_samples"]
        if not npz.is_file():
            raise DawsolError(f"{npz}: missing (run `dawsol evaluate {cell.name}` first)")
        with np.load(npz, allow_pickle=False) as data:
            ids = [str(i) for i in data["image_ids"]]
            for key in ["cams", *(k for k in data.files if k.startswith("cams_"))]:
                samples.append(dict(zip(ids, data[key].astype(np.float32), strict=True)))
                name = key.removeprefix("cams_")
                row_labels.append(label if key == "cams" else f"{label} + {EXTRACTOR_NAMES.get(name, name)}")
    labels = row_labels
    ids = [i for i in samples[0] if all(i in s for s in samples)][:MAX_IMAGES]
    if not ids:
        raise DawsolError(f"{cells_dir}: the cells' cam_samples.npz share no image id; re-run `dawsol evaluate`")
    meta = read_split(dataset_dir / "metadata" / "test")
    fig, axes = plt.subplots(len(samples), len(ids), figsize=(1.9 * len(ids), 2.0 * len(samples)), squeeze=False)
    for col, image_id in enumerate(ids):
        image = cv2.imread(str(dataset_dir / image_id), cv2.IMREAD_COLOR)
        if image is None:
            raise DawsolError(f"{dataset_dir / image_id}: image missing or unreadable (re-run `dawsol prepare`)")
        size = samples[0][image_id].shape[-1]
        original = meta.sizes.get(image_id, (image.shape[1], image.shape[0]))
        rgb = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (size, size)).astype(np.float32) / 255
        boxes = rescale_boxes(meta.boxes.get(image_id, []), original, size)
        contour = None
        if not len(boxes) and meta.masks.get(image_id):
            root = mask_root or dataset_dir
            ignore = meta.ignore_masks.get(image_id)
            mask = load_mask([root / m for m in meta.masks[image_id]], root / ignore if ignore else None, size)
            contour = mask == 1
        for row, sample in enumerate(samples):
            ax = axes[row][col]
            cam = sample[image_id]
            cam = (cam - cam.min()) / max(float(cam.max() - cam.min()), 1e-12)
            heat = plt.get_cmap("jet")(cam)[..., :3]
            ax.imshow(0.5 * rgb + 0.5 * heat)
            for x0, y0, x1, y1 in boxes:
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.2))
            if contour is not None:
                ax.contour(contour, levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(labels[row].replace("$", ""), fontsize=7)
            if row == 0:
                ax.set_title(Path(image_id).name, fontsize=6)
    _note(fig, note)
    _save(fig, path)
