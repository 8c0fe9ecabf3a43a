"""The search's report: per dataset one table (CSV, Markdown), figure and ``<dataset>.tuned.yaml`` (docs/search.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from dawsol.atomic import atomic_path, atomic_write_text
from dawsol.config import Cell
from dawsol.layout import SEARCH_FORMATS
from dawsol.report.tables import BACKBONE_NAMES, method_label
from dawsol.search.select import SELECTION_SPLIT, Trial, choose, read_trials, selection_metrics, tuned_block


def search_frame(trials: Sequence[Trial], chosen: Mapping[str, Trial], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per trial: dataset, backbone, method, trial, the drawn values, val metrics, score, chosen."""
    rows = []
    for trial in trials:
        cell = trial.cell
        row: dict[str, Any] = {
            "dataset": cell.dataset,
            "backbone": cell.backbone,
            "method": cell.method,
            "label": method_label(cell),
            "seed": cell.seed,
            "trial": cell.trial,
        }
        row.update(trial.draws)
        row.update({f"val {m}": trial.val.get(m) for m in metrics})
        row["score"] = trial.score
        best = chosen.get(cell.group)
        row["chosen"] = best is not None and best.cell.trial == cell.trial
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame, metrics: Sequence[str]) -> str:
    """The search table of one dataset as Markdown: one row per trial, the chosen trials in bold."""
    shown = frame.drop(columns=["dataset", "method"] + (["seed"] if frame["seed"].nunique() == 1 else [])).copy()
    shown["backbone"] = [BACKBONE_NAMES.get(b, b) for b in shown["backbone"]]
    for column in shown.columns:
        if column not in ("backbone", "label", "trial", "chosen"):
            shown[column] = [_cell_text(v) for v in shown[column]]
    chosen = shown.pop("chosen")
    header = "| " + " | ".join(shown.columns) + " |"
    lines = [header, "|" + "---|" * len(shown.columns)]
    for (_, row), is_chosen in zip(shown.iterrows(), chosen, strict=True):
        texts = [str(v) for v in row]
        lines.append("| " + " | ".join(f"**{t}**" if is_chosen else t for t in texts) + " |")
    names = ", ".join(metrics)
    return (
        f"Search trials, {SELECTION_SPLIT} split: score = mean of {names}; the chosen trial of each method in bold.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_search(frame: pd.DataFrame, path: Path) -> None:
    """Val score per trial and method, chosen trials ringed: how far apart the methods' best trials are."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for (backbone, label), rows in frame.groupby(["backbone", "label"], sort=False):
        name = label if frame["backbone"].nunique() == 1 else f"{label} ({BACKBONE_NAMES.get(backbone, backbone)})"
        mean = rows.groupby("trial", sort=True)["score"].mean()  # over the training seeds
        points = ax.plot(mean.index, mean.to_numpy(), "o-", label=name, alpha=0.8)[0]
        best = mean[sorted(set(rows.loc[rows["chosen"], "trial"]))]
        ax.plot(best.index, best.to_numpy(), "o", ms=12, mfc="none", mec=points.get_color(), mew=2)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{SELECTION_SPLIT} score (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


@dataclass(frozen=True)
class SearchResult:
    """What ``write_search`` read, chose and wrote."""

    trials: list[Trial]
    chosen: dict[str, Trial]
    files: list[Path]


def write_search(
    cells: Sequence[Cell],
    search: Mapping[str, Any],
    cells_dir: Path,
    out_dir: Path,
    digests: Mapping[Cell, str] | None = None,
) -> SearchResult:
    """Write each dataset's search table (CSV, Markdown), figure and tuned block (``layout.report_outputs``).

    Each dataset's choice is its own file, so a search of one dataset leaves another's committed choice alone.
    """
    metrics = selection_metrics(search)
    trials = read_trials(cells, search, cells_dir, digests)
    chosen = choose(trials)
    frame = search_frame(trials, chosen, metrics)
    header = (
        "# Settings chosen on the val split by the search of params.yaml `search` (docs/search.md);\n"
        "# copy this block into params.yaml to train the grid's cells with them.\n"
    )
    files = []
    for dataset, rows in frame.groupby("dataset", sort=False):
        files += [out_dir / f"{dataset}.{fmt}" for fmt in SEARCH_FORMATS]
        atomic_write_text(files[-4], rows.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(files[-3], to_markdown(rows, metrics))
        plot_search(rows, files[-2])
        own = {group: trial for group, trial in chosen.items() if trial.cell.dataset == dataset}
        atomic_write_text(files[-1], header + yaml.safe_dump(tuned_block(own), sort_keys=True))
    return SearchResult(trials, chosen, files)
