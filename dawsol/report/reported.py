"""The reported vs reproduced table: every published number of a grid cell next to ours, with the delta.

``results/reference/reported.csv`` (columns ``dataset,backbone,method,variant,metric,value,source``)
holds the published numbers with their sources. For each row whose (dataset, backbone, method)
is a cell method of the grid with results, the table adds the reproduced value (the test split,
mean over seeds) and ``delta = reproduced - reported`` in percentage points. The ``two-stage``
variant's Top-1 Loc is compared with ``Top-1 Loc (two-stage)`` (``dawsol evaluate --predictions``);
the ``bagcams`` variant with the cells' BagCAMs maps (``eval.cam_methods``), every other variant
with the cells' own CAMs.
Rows of no cell method (baselines, methods outside the grid) and means (backbone or dataset ``-``)
are kept in the file and left out of the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dawsol.atomic import atomic_write_text
from dawsol.config import Cell
from dawsol.errors import DawsolError
from dawsol.layout import COMPARISON_FORMATS, COMPARISON_STEM, evaluate_outputs, read_cell_metrics
from dawsol.report.tables import BACKBONE_NAMES, DATASET_NAMES, _latex_escape, as_number, method_label

REPORTED_CSV = Path("results/reference/reported.csv")
COLUMNS = ("dataset", "backbone", "method", "variant", "metric", "value", "source")
TWO_STAGE = "Top-1 Loc (two-stage)"
VARIANT_EXTRACTORS = {"bagcams": "bagcams"}  # a reported variant computed by a post-hoc map; the rest: the CAM


def load_reported(path: Path = REPORTED_CSV) -> pd.DataFrame:
    """The published numbers; an empty frame if ``path`` does not exist."""
    if not path.is_file():
        return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DawsolError(f"{path}: missing column(s) {', '.join(missing)}; the header must be {','.join(COLUMNS)}")
    return frame[list(COLUMNS)]


def reproduced_values(cells: Sequence[Cell], cells_dir: Path, split: str = "test") -> pd.DataFrame:
    """Long format: one row per (dataset, backbone, method, extractor, metric) with the mean over the seeds
    found; ``extractor`` is ``cam`` for the cell's own maps, else the post-hoc method."""
    rows = []
    for cell in cells:
        if not evaluate_outputs(cell, cells_dir)["metrics"].is_file():
            continue
        maps = read_cell_metrics(cell, split, cells_dir).maps
        for extractor, metrics in maps.items():
            for metric, value in metrics.items():
                number = as_number(value)
                if not math.isnan(number):
                    rows.append((cell.dataset, cell.backbone, cell.method, extractor, metric, number, cell.seed))
    keys = ["dataset", "backbone", "method", "extractor", "metric"]
    frame = pd.DataFrame(rows, columns=[*keys, "value", "seed"])
    grouped = frame.groupby(keys, sort=False)
    return grouped.agg(reproduced=("value", "mean"), seeds=("seed", "nunique")).reset_index()


def compare(reported: pd.DataFrame, reproduced: pd.DataFrame) -> pd.DataFrame:
    """The reported rows of cell methods with results, with ``reproduced``, ``seeds`` and ``delta``."""
    keys = ["dataset", "backbone", "method", "metric"]
    wanted = reported.copy()
    two_stage_top1 = (wanted["variant"] == "two-stage") & (wanted["metric"] == "Top-1 Loc")
    wanted["lookup"] = wanted["metric"].where(~two_stage_top1, TWO_STAGE)
    wanted["extractor"] = wanted["variant"].map(VARIANT_EXTRACTORS).fillna("cam")
    methods = reproduced[["dataset", "backbone", "method"]].drop_duplicates()
    wanted = wanted.merge(methods, on=["dataset", "backbone", "method"], how="inner")
    merged = wanted.merge(
        reproduced.rename(columns={"metric": "lookup"}),
        on=["dataset", "backbone", "method", "extractor", "lookup"],
        how="left",
    )
    merged["delta"] = merged["reproduced"] - merged["value"]
    merged = merged.rename(columns={"value": "reported"}).drop(columns=["lookup", "extractor"])
    return merged[[*keys[:3], "variant", "metric", "reported", "reproduced", "delta", "seeds", "source"]]


def _fmt(value: float, sign: bool = False) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def _display(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Dataset": [DATASET_NAMES.get(d, d) for d in table["dataset"]],
            "Backbone": [BACKBONE_NAMES.get(b, b) for b in table["backbone"]],
            "Method": [method_label(Cell("x", "x", *m.split("-", 1), 0)) for m in table["method"]],
            "Variant": list(table["variant"]),
            "Metric": list(table["metric"]),
            "Reported": [_fmt(v) for v in table["reported"]],
            "Reproduced": [_fmt(v) for v in table["reproduced"]],
            "Delta": [_fmt(v, sign=True) for v in table["delta"]],
            "Source": list(table["source"]),
        }
    )


CAPTION = "Reported vs reproduced (test split, %; reproduced: mean over seeds; delta = reproduced - reported)."


def to_markdown(table: pd.DataFrame) -> str:
    shown = _display(table)
    shown["Method"] = [label.replace("$L_u$", "L_u") for label in shown["Method"]]
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "| " + " | ".join(["---"] * 5 + ["---:"] * 3 + ["---"]) + " |"
    body = ["| " + " | ".join(row) + " |" for row in shown.astype(str).itertuples(index=False)]
    if table.empty:
        body = ["| " + " | ".join(["–"] * len(shown.columns)) + " |"]
    return "\n".join([header, rule, *body, "", f"*{CAPTION}*", ""])


def to_latex(table: pd.DataFrame) -> str:
    shown = _display(table).map(lambda s: s.replace("–", "--"))
    shown["Method"] = [
        "$".join(_latex_escape(p) if i % 2 == 0 else p for i, p in enumerate(m.split("$"))) for m in shown["Method"]
    ]
    for column in ("Dataset", "Variant", "Metric", "Source"):
        shown[column] = [_latex_escape(text) for text in shown[column]]
    return shown.style.hide(axis="index").to_latex(
        column_format="lllll" + "r" * 3 + "p{5cm}",
        hrules=True,
        position_float="centering",
        caption=CAPTION,
        label="tab:reported-vs-reproduced",
        environment="table*",
    )


def to_csv(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, float_format="%.4f")


def to_html(table: pd.DataFrame) -> str:
    """A standalone HTML table with its caption (for the Snakemake report)."""
    shown = _display(table)
    shown["Method"] = [label.replace("$L_u$", "L<sub>u</sub>") for label in shown["Method"]]
    if table.empty:
        shown = pd.DataFrame([["–"] * len(shown.columns)], columns=shown.columns)
    body = shown.to_html(index=False, escape=False, border=0, classes="dawsol")
    return f'<html><head><meta charset="utf-8"></head><body><p>{CAPTION}</p>\n{body}\n</body></html>\n'


def write_comparison(
    cells: Sequence[Cell], cells_dir: Path, out_dir: Path, reported_csv: Path = REPORTED_CSV
) -> list[Path]:
    """Write ``<out_dir>/reported_vs_reproduced.{tex,csv,md,html}`` for the grid's cells; return the paths."""
    table = compare(load_reported(reported_csv), reproduced_values(cells, cells_dir))
    renderers = {"tex": to_latex, "csv": to_csv, "md": to_markdown, "html": to_html}
    paths = []
    for ext in COMPARISON_FORMATS:
        render = renderers[ext]
        path = out_dir / f"{COMPARISON_STEM}.{ext}"
        atomic_write_text(path, render(table))
        paths.append(path)
    return paths
