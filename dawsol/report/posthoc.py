"""The post-hoc table: every scored extractor x method of a dataset, mean +- std over seeds, and its cost.

One row per (backbone, extractor): the cell's own CAM first, then the maps of ``eval.cam_methods``
(docs/posthoc.md), in the order the cells' ``metrics.json`` list them; one column group per WSOL x DA
method (``CAM``, ``CAM + DA-WSOL-MMD``, ...) with MaxBoxAccV2, PxAP and pIoU on the test split, and
the seconds per test image of making the score maps over every cell of the row (``results/timing/``) (the CAM's includes
the model's forward pass, which the other extractors repeat). Written as Markdown and CSV.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dawsol.atomic import atomic_write_text
from dawsol.config import Cell
from dawsol.errors import DawsolError
from dawsol.layout import POSTHOC_FORMATS, POSTHOC_SUFFIX, read_cell_metrics, timing_path
from dawsol.report.tables import BACKBONE_NAMES, DATASET_NAMES, EXTRACTOR_NAMES, as_number, mean_std, method_label

POSTHOC_METRICS = ("MaxBoxAccV2", "PxAP", "pIoU")
SECONDS = "seconds_per_image"


def posthoc_frame(cells: Sequence[Cell], cells_dir: Path, split: str = "test") -> pd.DataFrame:
    """One row per cell and extractor: dataset, backbone, method, method label, extractor, seed, the split's
    ``POSTHOC_METRICS`` and the seconds per image (``layout.timing_path``; NaN where none was recorded)."""
    rows = []
    for cell in cells:
        maps = read_cell_metrics(cell, split, cells_dir).maps
        seconds = _recorded_seconds(timing_path(cell, cells_dir))
        for extractor, metrics in maps.items():
            rows.append(
                {
                    "dataset": cell.dataset,
                    "backbone": cell.backbone,
                    "method": cell.method,
                    "label": method_label(cell),
                    "extractor": extractor,
                    "seed": cell.seed,
                    **{name: as_number(metrics.get(name)) for name in POSTHOC_METRICS},
                    SECONDS: as_number((seconds.get(extractor) or {}).get(split)),
                }
            )
    return pd.DataFrame(rows)


def _recorded_seconds(path: Path) -> dict[str, Any]:
    """The recorded seconds per image per map and split, {} if none (a clone, or a cell evaluated before timing)."""
    try:
        recorded = json.loads(path.read_text())["seconds_per_image"]
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DawsolError(f"{path}: not a timing record ({exc}); delete it or re-run `dawsol evaluate`") from None
    return recorded if isinstance(recorded, dict) else {}


def posthoc_stats(frame: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Mean, sample std and seed count per (backbone, extractor, method), and each (backbone, extractor)'s mean
    seconds per image over all its cells, in the cells' order."""
    rows = frame[frame["dataset"] == dataset]
    keys = ["backbone", "extractor", "method", "label"]
    grouped = rows.groupby(keys, sort=False)[list(POSTHOC_METRICS)]
    stats = grouped.agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats.insert(0, "seeds", grouped.size())
    stats = stats.reset_index()
    seconds = rows.groupby(["backbone", "extractor"], sort=False)[SECONDS].mean()
    stats[SECONDS] = [seconds[(b, e)] for b, e in zip(stats["backbone"], stats["extractor"], strict=True)]
    return stats


def to_markdown(stats: pd.DataFrame, dataset: str) -> str:
    """One row per (backbone, extractor), a column per method x metric, the best mean per column in bold."""
    labels = list(dict.fromkeys(stats["label"]))
    several = stats["backbone"].nunique() > 1
    header = ["Backbone"] if several else []
    header += ["Extractor", *[f"{label}: {metric}" for label in labels for metric in POSTHOC_METRICS], "s / image"]
    best = {
        (label, metric): stats.loc[stats["label"] == label, f"{metric}_mean"].round(1).max()
        for label in labels
        for metric in POSTHOC_METRICS
    }
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * (len(header) - 1) + ["---:"]) + " |"]
    for (backbone, extractor), group in stats.groupby(["backbone", "extractor"], sort=False):
        by_label = {row["label"]: row for _, row in group.iterrows()}
        cells = [BACKBONE_NAMES.get(backbone, backbone)] if several else []
        cells.append(EXTRACTOR_NAMES.get(extractor, extractor))
        for label in labels:
            for metric in POSTHOC_METRICS:
                row = by_label.get(label)
                mean = math.nan if row is None else row[f"{metric}_mean"]
                text = mean_std(mean, math.nan if row is None else row[f"{metric}_std"])
                cells.append(
                    f"**{text}**" if not math.isnan(mean) and round(mean, 1) == best[(label, metric)] else text
                )
        cells.append(_seconds(group[SECONDS].iloc[0]))
        lines.append("| " + " | ".join(cells) + " |")
    seeds = int(stats["seeds"].max())
    name = DATASET_NAMES.get(dataset, dataset)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
    caption = (
        f"{name}, test split, every post-hoc map of the same checkpoints: {spread} (%); best per column in bold. "
        "s / image: making the score maps, mean over the row's cells (CAM: the model's forward pass included)."
    )
    return "\n".join([*lines, "", f"*{caption}*", ""])


def _seconds(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}" if value < 1 else f"{value:.2f}"


def to_csv(stats: pd.DataFrame) -> str:
    """The numbers: one row per (backbone, extractor, method)."""
    columns = ["backbone", "extractor", "method", "label", "seeds"]
    columns += [f"{m}_{s}" for m in POSTHOC_METRICS for s in ("mean", "std")] + [SECONDS]
    return stats[columns].to_csv(index=False, float_format="%.4f")


def write_posthoc_tables(frame: pd.DataFrame, dataset: str, out_dir: Path) -> list[Path]:
    """Write ``<dataset>_posthoc.{md,csv}`` under ``out_dir``; return the paths."""
    stats = posthoc_stats(frame, dataset)
    renderers = {"md": lambda: to_markdown(stats, dataset), "csv": lambda: to_csv(stats)}
    paths = []
    for ext in POSTHOC_FORMATS:
        path = out_dir / f"{dataset}{POSTHOC_SUFFIX}.{ext}"
        atomic_write_text(path, renderers[ext]())
        paths.append(path)
    return paths
