"""The results tables: one row per (backbone, method), mean +- std over seeds, best in bold.

Built with pandas from the cells' ``metrics.json`` (test split) and written as LaTeX
(booktabs), CSV (numbers), Markdown and HTML (for ``snakemake --report``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dawsol.atomic import atomic_write_text
from dawsol.components.backbones import BACKBONES
from dawsol.components.da_losses import DA_LOSSES
from dawsol.components.extractors import EXTRACTORS
from dawsol.components.wsol_methods import WSOL_METHODS
from dawsol.config import Cell
from dawsol.errors import DawsolError
from dawsol.layout import OWN_MAPS, read_cell_metrics
from dawsol.provenance import describe

# the rows of score maps that need no model: what a number is worth (dawsol.report.baselines)
BASELINE_BACKBONE = "baseline"
BASELINE_LABELS = {"center": "Centre baseline (no model)", "random": "Random 16x16 maps (no model)"}
METRICS = ("Top-1 Cls", "Top-1 Loc", "GT-known Loc", "MaxBoxAccV2", "PxAP", "pIoU")
WSOL_NAMES = {name: record.title for name, record in WSOL_METHODS.items()}
# a DA method named after its loss takes the loss's label; the ablation variants of params.yaml have theirs here
DA_NAMES = {
    "none": "",
    **{name: record.title for name, record in DA_LOSSES.items()},
    "mmd_notsa": "DA-WSOL-MMD w/o TSA, w/o $L_u$",
    "mmd_nolu": "DA-WSOL-MMD w/o $L_u$",
    "lu_only": "$L_u$ only",
}
EXTRACTOR_NAMES = {name: record.title for name, record in EXTRACTORS.items()}
BACKBONE_NAMES = {**{name: record.title for name, record in BACKBONES.items()}, BASELINE_BACKBONE: "—"}
DATASET_NAMES = {
    "synthetic": "Synthetic",
    "photos": "Photos (pasted)",
    "cub": "CUB-200-2011",
    "ilsvrc": "ILSVRC",
    "openimages": "OpenImages30k",
}


def method_label(cell: Cell) -> str:
    """The row label of a cell's method, e.g. ``CAM + DA-WSOL-MMD`` (LaTeX math for subscripts)."""
    wsol = WSOL_NAMES.get(cell.wsol, cell.wsol)
    da = DA_NAMES.get(cell.da, cell.da.replace("_", " "))
    return f"{wsol} + {da}" if da else wsol


def load_metrics(cells: Sequence[Cell], cells_dir: Path, split: str = "test") -> pd.DataFrame:
    """One row per cell: dataset, backbone, method, label, seed, the code version(s) that trained and evaluated
    it (``dawsol.provenance.describe``) and the split's metrics; one more per post-hoc map in its ``metrics.json``
    (method ``<wsol>-<da>/<extractor>``, label e.g. ``CAM + DA-WSOL-MMD + BagCAMs``)."""
    rows = []
    for cell in cells:
        found = read_cell_metrics(cell, split, cells_dir)
        code = found.document.get("code") or {}
        row = {
            "dataset": cell.dataset,
            "backbone": cell.backbone,
            "method": cell.method,
            "label": method_label(cell),
            "seed": cell.seed,
            "code": " | ".join(sorted({describe(code.get("trained")), describe(code.get("evaluated"))})),
        }
        for name, metrics in found.maps.items():  # the cell's own maps, then the post-hoc maps of the same model
            own = name == OWN_MAPS
            rows.append(
                {
                    **row,
                    "method": cell.method if own else f"{cell.method}/{name}",
                    "label": row["label"] if own else f"{row['label']} + {EXTRACTOR_NAMES.get(name, name)}",
                    **{metric: as_number(metrics.get(metric)) for metric in METRICS},
                }
            )
    return pd.DataFrame(rows)


def baseline_rows(dataset: str, metrics: dict[str, dict[str, object]]) -> pd.DataFrame:
    """Table rows of the no-model baselines of ``dataset`` (baseline -> its ``metrics_dict`` on the test split)."""
    rows = []
    for name, values in metrics.items():
        row = {
            "dataset": dataset,
            "backbone": BASELINE_BACKBONE,
            "method": f"{name}-none",
            "label": BASELINE_LABELS[name],
            "seed": 0,
            "code": None,
        }
        row.update({metric: as_number(values.get(metric)) for metric in METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def as_number(value: object) -> float:
    """A metric as a float, NaN for anything that is not a number (null, a string, a bool)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


@dataclass(frozen=True)
class Table:
    """One dataset's aggregated table: ``stats`` has ``<metric>_mean`` / ``<metric>_std`` columns."""

    dataset: str
    metrics: tuple[str, ...]
    stats: pd.DataFrame
    num_seeds: int
    code_versions: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the table lacks, e.g. the baselines of data a fresh clone has not prepared

    def best(self) -> pd.DataFrame:
        """True where a row holds the best displayed mean of its metric within its backbone (never a baseline)."""
        rounded = self.stats[[f"{m}_mean" for m in self.metrics]].round(1)
        rounded.columns = list(self.metrics)
        best = rounded.groupby(self.stats["backbone"]).transform("max")
        model_rows = (self.stats["backbone"] != BASELINE_BACKBONE).to_numpy()[:, None]
        return rounded.eq(best) & rounded.notna() & model_rows

    def display(self, bold: str) -> pd.DataFrame:
        """Strings ``mean ± std`` with the best wrapped by the ``bold`` format (``**{}**``)."""
        best = self.best()
        out = pd.DataFrame(
            {
                "Backbone": [BACKBONE_NAMES.get(b, b) for b in self.stats["backbone"]],
                "Method": list(self.stats["label"]),
            }
        )
        for metric in self.metrics:
            texts = []
            for i, (mean, std) in enumerate(
                zip(self.stats[f"{metric}_mean"], self.stats[f"{metric}_std"], strict=True)
            ):
                text = mean_std(mean, std)
                texts.append(bold.format(text) if best[metric].iloc[i] else text)
            out[metric] = texts
        return out

    def caption(self) -> str:
        name = DATASET_NAMES.get(self.dataset, self.dataset)
        seeds = f"mean ± std over {self.num_seeds} seeds" if self.num_seeds > 1 else "one seed"
        caption = f"{name}, test split: {seeds} (%); best per column and backbone in bold."
        if len(self.code_versions) > 1:
            versions = "; ".join(self.code_versions)
            caption += f" Warning: its cells come from {len(self.code_versions)} code versions ({versions})."
        return " ".join([caption, *(f"Missing: {note}." for note in self.notes)])


def mean_std(mean: float, std: float) -> str:
    """A table cell: ``mean ± std`` to one decimal, the mean alone without a std, ``–`` without a mean."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def aggregate(frame: pd.DataFrame, dataset: str) -> Table:
    """Mean and (sample) std over seeds per (backbone, method), in the grid's row order."""
    rows = frame[frame["dataset"] == dataset]
    if rows.empty:
        raise DawsolError(f"no cell of dataset {dataset!r} in the grid: nothing to tabulate")
    metrics = tuple(m for m in METRICS if rows[m].notna().any())
    keys = ["backbone", "method", "label"]
    grouped = rows.groupby(keys, sort=False)[list(metrics)]
    stats = grouped.agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats.insert(0, "seeds", grouped.size())
    stats = stats.reset_index()
    methods = stats["backbone"] != BASELINE_BACKBONE
    versions = tuple(sorted(set(rows["code"].dropna())))
    return Table(dataset, metrics, stats, int(stats.loc[methods, "seeds"].max()), versions)


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    shown = table.display(bold="\\textbf{{{}}}").map(
        lambda s: s.replace("±", "$\\pm$").replace("–", "--").replace("—", "---")
    )
    shown["Method"] = [_latex_label(label) for label in shown["Method"]]
    styler = shown.style.hide(axis="index")
    return styler.to_latex(
        column_format="ll" + "c" * len(table.metrics),
        hrules=True,
        position_float="centering",
        caption=_latex_escape(table.caption()).replace("±", "$\\pm$"),
        label=f"tab:{table.dataset}",
        environment="table",
    )


def _latex_label(label: str) -> str:
    """Escape a label outside its ``$...$`` math parts."""
    parts = label.split("$")
    return "$".join(_latex_escape(p) if i % 2 == 0 else p for i, p in enumerate(parts))


def _latex_escape(text: str) -> str:
    for char in ("\\", "&", "%", "#", "_", "{", "}"):
        text = text.replace(char, "\\" + char)
    return text


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table with the caption below it."""
    shown = table.display(bold="**{}**")
    shown["Method"] = [label.replace("$L_u$", "L_u") for label in shown["Method"]]
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "| " + " | ".join(["---", "---", *(["---:"] * len(table.metrics))]) + " |"
    body = ["| " + " | ".join(row) + " |" for row in shown.astype(str).itertuples(index=False)]
    return "\n".join([header, rule, *body, "", f"*{table.caption()}*", ""])


def to_csv(table: Table) -> str:
    """The numbers: one row per (backbone, method), ``<metric>_mean`` and ``<metric>_std`` columns."""
    columns = ["backbone", "method", "label", "seeds"]
    columns += [f"{m}_{s}" for m in table.metrics for s in ("mean", "std")]
    return table.stats[columns].to_csv(index=False, float_format="%.4f")


def to_html(table: Table) -> str:
    """A standalone HTML table (for the Snakemake report)."""
    shown = table.display(bold="<b>{}</b>")
    shown["Method"] = [label.replace("$L_u$", "L<sub>u</sub>") for label in shown["Method"]]
    body = shown.to_html(index=False, escape=False, border=0, classes="dawsol")
    head = '<head><meta charset="utf-8"></head>'
    return f"<html>{head}<body><p>{table.caption()}</p>\n{body}\n</body></html>\n"


def write_tables(table: Table, out_dir: Path) -> list[Path]:
    """Write ``<dataset>.{tex,csv,md,html}`` under ``out_dir``; return the paths."""
    renderers = {"tex": to_latex, "csv": to_csv, "md": to_markdown, "html": to_html}
    paths = []
    for ext, render in renderers.items():
        path = out_dir / f"{table.dataset}.{ext}"
        atomic_write_text(path, render(table))
        paths.append(path)
    return paths
