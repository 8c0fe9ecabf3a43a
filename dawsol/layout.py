"""Where everything lives: every cell and report path, the resume link, the prepared data's metadata files.

One place for the path contract of docs/architecture.md ("Cell outputs"): the library writes
these paths, the Snakefile and the generated ``dvc.yaml`` declare them, the report reads them
(a cell's ``metrics.json`` through ``read_cell_metrics``).
Every path of a cell derives from its name ``<dataset>/<backbone>/<wsol>-<da>/seed<k>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from dawsol.config import Cell, Settings, grid_cells, grid_imports
from dawsol.errors import DawsolError

DVC_YAML = Path("dvc.yaml")
RESULTS = Path("results")
CELLS_DIR = RESULTS / "cells"
TABLES_DIR = RESULTS / "tables"
FIGURES_DIR = RESULTS / "figures"
PLOTS_DIR = RESULTS / "plots"
SEARCH_DIR = RESULTS / "search"
# per dataset: the no-model baselines of its test split, a result a report reads where the data is missing
BASELINES_DIR = RESULTS / "baselines"
# per searched dataset: the trials' table and figure, and `<dataset>.tuned.yaml` (its part of params.yaml `tuned`)
TUNED_FORMAT = "tuned.yaml"
SEARCH_FORMATS = ("csv", "md", "png", TUNED_FORMAT)
RUNS_DIR = Path("runs")
TABLE_FORMATS = ("tex", "csv", "md", "html")
# the reported vs reproduced table over the whole grid (dawsol.report.reported)
COMPARISON_STEM = "reported_vs_reproduced"
COMPARISON_FORMATS = ("tex", "csv", "md", "html")
# the post-hoc table per dataset: every extractor x method (dawsol.report.posthoc)
POSTHOC_SUFFIX = "_posthoc"
POSTHOC_FORMATS = ("md", "csv")
FIGURE_KINDS = ("cams", "boxacc", "pxpr", "training")
SPLITS = ("train", "val", "test")


def split_file(dataset_dir: Path, split: str, name: str = "image_ids.txt") -> Path:
    """``<dataset_dir>/metadata/<split>/<name>``: one file of a prepared split's metadata."""
    return dataset_dir / "metadata" / split / name


def require_prepared(settings: Settings) -> Path:
    """The prepared dataset folder, or a DawsolError naming the command that prepares it."""
    dataset_dir = settings.dataset_dir
    missing = [s for s in SPLITS if not split_file(dataset_dir, s).is_file()]
    if missing:
        raise DawsolError(
            f"{dataset_dir}: prepared data not found (no metadata/{missing[0]}/image_ids.txt); "
            f"run: dawsol prepare {settings.cell.dataset}"
        )
    return dataset_dir


def train_outputs(cell: Cell | str) -> dict[str, Path]:
    """``dawsol train``'s outputs of one cell."""
    run_dir = RUNS_DIR / str(cell)
    return {"checkpoint": run_dir / "checkpoint.pt", "train_log": run_dir / "train_log.jsonl"}


def checkpoint_path(cell: Cell | str) -> Path:
    """``runs/<cell>/checkpoint.pt``."""
    return train_outputs(cell)["checkpoint"]


def train_log_path(cell: Cell | str) -> Path:
    """``runs/<cell>/train_log.jsonl``."""
    return train_outputs(cell)["train_log"]


def run_dir(cell: Cell | str) -> Path:
    """``runs/<cell>``: the cell's checkpoint and training log."""
    return checkpoint_path(cell).parent


def resume_path(cell: Cell | str) -> Path:
    """``runs/<cell>/.resume.pt``: a second name (hard link) of the last checkpoint.

    Snakemake and DVC delete a job's declared outputs before they re-run it, checkpoint.pt
    included; this undeclared name survives, so a re-run of an interrupted (e.g. preempted) job
    resumes instead of starting over.
    """
    return checkpoint_path(cell).with_name(".resume.pt")


def settings_output(cell: Cell | str) -> Path:
    """The resolved settings of one cell, DVC's per-cell re-run trigger of its evaluation."""
    return RUNS_DIR / str(cell) / "resolved.json"


def weights_settings_output(cell: Cell | str) -> Path:
    """The resolved settings less ``eval`` (those that decide the weights), DVC's re-run trigger of training."""
    return RUNS_DIR / str(cell) / "resolved_weights.json"


def evaluate_outputs(cell: Cell | str, cells_dir: Path = CELLS_DIR) -> dict[str, Path]:
    """``dawsol evaluate``'s outputs of one cell (under ``cells_dir``, by default the project's)."""
    cell_dir = cells_dir / str(cell)
    return {
        "metrics": cell_dir / "metrics.json",
        # the few numbers a user compares across cells (DVC's metrics; the whole metrics.json is an out)
        "headline": cell_dir / "headline.json",
        "curves": cell_dir / "curves.csv",
        "posthoc_curves": cell_dir / "curves_posthoc.csv",
        "cams": cell_dir / "cams.png",
        "cam_samples": cell_dir / "cam_samples.npz",
    }


def timing_path(cell: Cell | str, cells_dir: Path = CELLS_DIR) -> Path:
    """Where ``dawsol evaluate`` records its seconds per image per map and split: beside the cells' results, not
    among a cell's outputs, which are the same bytes on every run (``results/timing/<cell>.json``)."""
    return cells_dir.parent / "timing" / f"{cell}.json"


class CellMetrics(NamedTuple):
    """One split of a cell's ``metrics.json``: the whole document and the split's metrics per map
    (``OWN_MAPS``: the cell's own CAMs, then one entry per post-hoc extractor)."""

    document: dict[str, Any]
    maps: dict[str, dict[str, Any]]


OWN_MAPS = "cam"  # the key of a cell's own maps in ``CellMetrics.maps``


def read_cell_metrics(cell: Cell, split: str, cells_dir: Path = CELLS_DIR) -> CellMetrics:
    """``split`` of the cell's ``metrics.json`` under ``cells_dir`` (by default the project's).

    A missing file, or one without ``split``'s metrics for the cell's own maps or a post-hoc extractor's,
    is a DawsolError naming the file and the command that writes it.
    """
    path = evaluate_outputs(cell, cells_dir)["metrics"]
    try:
        document = json.loads(path.read_text())
        maps = {OWN_MAPS: document["splits"][split]}
        maps.update({name: block["splits"][split] for name, block in (document.get("extractors") or {}).items()})
        if not all(isinstance(metrics, dict) for metrics in maps.values()):
            raise TypeError(f"a {split} entry is not an object")
    except FileNotFoundError:
        raise DawsolError(f"{path}: missing (run `dawsol evaluate {cell.name}` first)") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise DawsolError(
            f"{path}: not a cell metrics.json with {split} metrics ({exc!r}); re-run `dawsol evaluate {cell.name}`"
        ) from None
    return CellMetrics(document, maps)


def baselines_path(dataset: str) -> Path:
    """``results/baselines/<dataset>.json``: the centre and random baselines of the dataset's test split, which
    ``dawsol report`` writes where the data is prepared and reads where it is not (a fresh clone)."""
    return BASELINES_DIR / f"{dataset}.json"


def method_key(cell: Cell) -> str:
    """A file-name-safe key of a cell's row in the tables: ``<backbone>_<wsol>-<da>``."""
    return f"{cell.backbone}_{cell.method}"


def report_outputs(params: Mapping[str, Any], source: str | Path) -> dict[str, list[Path]]:
    """``dawsol report``'s outputs: tables, figures, DVC plot data and the no-model baselines per dataset and the
    reported vs reproduced table, over the grid's cells; a search's table, figure and ``<dataset>.tuned.yaml`` over
    its trials."""
    cells = grid_cells(params, source)
    trained = [c for c in cells if c.trial is None]
    tables, figures, plots, search, baselines = [], [], [], [], []
    for dataset in dict.fromkeys(c.dataset for c in trained):
        baselines.append(baselines_path(dataset))
        tables += [TABLES_DIR / f"{dataset}.{fmt}" for fmt in TABLE_FORMATS]
        tables += [TABLES_DIR / f"{dataset}{POSTHOC_SUFFIX}.{fmt}" for fmt in POSTHOC_FORMATS]
        figures += [FIGURES_DIR / f"{dataset}_{kind}.png" for kind in FIGURE_KINDS]
        keys = dict.fromkeys(method_key(c) for c in trained if c.dataset == dataset)
        plots += [PLOTS_DIR / dataset / f"{key}.csv" for key in keys]
    if trained:
        tables += [TABLES_DIR / f"{COMPARISON_STEM}.{fmt}" for fmt in COMPARISON_FORMATS]
    trial_datasets = dict.fromkeys(c.dataset for c in cells if c.trial is not None)
    if trial_datasets:
        search = [SEARCH_DIR / f"{dataset}.{fmt}" for dataset in trial_datasets for fmt in SEARCH_FORMATS]
    return {"tables": tables, "figures": figures, "plots": plots, "search": search, "baselines": baselines}


def report_inputs(params: Mapping[str, Any], source: str | Path) -> list[Path]:
    """What ``dawsol report`` reads of the cells: every cell's evaluation outputs, and the training log of
    every cell dawsol trained (an imported cell has none)."""
    imported = grid_imports(params, source)
    paths = []
    for cell in grid_cells(params, source):
        paths += [path for key, path in evaluate_outputs(cell).items() if key != "headline"]  # a copy of metrics
        if cell not in imported:
            paths.append(train_log_path(cell))
    return paths
