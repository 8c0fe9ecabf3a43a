"""``dawsol report``: tables, figures and plot data from the cells' results, and the grid's MLflow runs.

Everything is read from the files the DAG tracks (``results/cells/<cell>/``, ``runs/<cell>/
train_log.jsonl`` and the prepared test split; where a fresh clone lacks them, what the last report
made of them is kept) and written to the paths ``dawsol.layout.report_outputs`` declares for
Snakemake and DVC. The tables, figures, plot data and baselines are written beside their paths and
renamed together at the end (``dawsol.atomic.staged``), and so is the search's part: a failure
before then (a bad cell, a full disk, a kill) leaves the old report as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from dawsol import tracking
from dawsol.atomic import atomic_write_text, remove_leftovers, staged
from dawsol.config import Cell, Settings, grid_cells, grid_imports, resolve, tree_digest
from dawsol.layout import (
    CELLS_DIR,
    FIGURES_DIR,
    PLOTS_DIR,
    RUNS_DIR,
    SEARCH_DIR,
    TABLES_DIR,
    evaluate_outputs,
    method_key,
    report_outputs,
    train_log_path,
)
from dawsol.report.baselines import missing_test_split, table_baselines
from dawsol.report.posthoc import posthoc_frame, write_posthoc_tables
from dawsol.report.reported import write_comparison
from dawsol.report.search import SearchResult, write_search
from dawsol.report.tables import (
    BACKBONE_NAMES,
    Table,
    aggregate,
    baseline_rows,
    load_metrics,
    method_label,
    write_tables,
)
from dawsol.report.tracked import log_tables, results_columns, summaries

log = logging.getLogger(__name__)
# where the inputs a fresh clone lacks come from: DVC outputs and evaluation files that git does not keep
NOT_IN_GIT = {
    "train_log": "`dawsol train` writes them and DVC, not git, keeps them (`dvc pull`, or `snakemake --cores all`)",
    "cams": "`dawsol evaluate` writes them and git does not keep them (`snakemake --cores all`)",
}
GRID_TAG = "dawsol.grid"  # the grid's parent run: a digest of its cells and their code versions
LEGACY_GRID_TAG = "dawsol.summary"  # "true" on the grid runs of stores made before the tag dawsol.kind


def build_search(params: Mapping[str, Any], source: str | Path) -> SearchResult | None:
    """The search's tables, figures and tuned blocks if the grid has trial cells (docs/search.md)."""
    trials = [c for c in grid_cells(params, source) if c.trial is not None]
    if not trials:
        return None
    digests = {cell: resolve(cell, params, source).digest() for cell in trials}
    remove_leftovers(report_outputs(params, source)["search"])  # what a killed report left
    with staged():
        result = write_search(trials, params.get("search") or {}, CELLS_DIR, SEARCH_DIR, digests)
    for group, trial in result.chosen.items():
        log.info("search: %s chose %s (val score %.2f)", group, trial.cell, trial.score)
    return result


def build_report(params: Mapping[str, Any], source: str | Path) -> dict[str, Table]:
    """Write every dataset's tables, figures, DVC plot data and no-model baselines; return the tables by dataset.

    What a report cannot recompute is kept, not replaced (a fresh clone has no data, training logs or CAM
    samples): the baseline rows come from ``results/baselines/``, and a figure with nothing to draw stays as
    it was, the log saying so. Search trials are not rows of these tables (``build_search`` reports them).
    """
    cells = [c for c in grid_cells(params, source) if c.trial is None]
    if not cells:
        return {}
    outputs = report_outputs(params, source)
    written = outputs["tables"] + outputs["figures"] + outputs["plots"] + outputs["baselines"]
    remove_leftovers(written)  # what a killed report left
    with staged():
        return _write_report(cells, params, source)


def _write_report(cells: list[Cell], params: Mapping[str, Any], source: str | Path) -> dict[str, Table]:
    """``build_report``'s writes, every one staged."""
    from dawsol.report import figures

    imports = grid_imports(params, source)
    frame = load_metrics(cells, CELLS_DIR)
    extracted = posthoc_frame(cells, CELLS_DIR)
    tables = {}
    for dataset in dict.fromkeys(c.dataset for c in cells):
        own = [c for c in cells if c.dataset == dataset]
        settings = resolve(_first_seed(own)[0], params, source)
        baselines = table_baselines(settings)
        rows = [frame, baseline_rows(dataset, baselines.metrics)] if baselines.metrics else [frame]
        table = aggregate(pd.concat(rows, ignore_index=True), dataset)
        if baselines.missing:  # a fresh clone without the committed baselines
            table = replace(table, notes=(_warn(baselines.missing),))
        if len(table.code_versions) > 1:
            log.warning(
                "report: the %s table mixes cells of %d code versions (%s); re-run the stale cells "
                "(snakemake --cores all --forcerun train)",
                dataset,
                len(table.code_versions),
                "; ".join(table.code_versions),
            )
        write_tables(table, TABLES_DIR)
        write_posthoc_tables(extracted, dataset, TABLES_DIR)
        tables[dataset] = table
        labels = _labels(own)

        curves = figures.mean_curves(figures.read_curves(own, CELLS_DIR))
        for (backbone, method), curve in curves.items():
            key = method_key(Cell(dataset, backbone, *method.split("-", 1), 0))
            atomic_write_text(PLOTS_DIR / dataset / f"{key}.csv", curve.to_csv(index=False, float_format="%.6g"))
        figures.plot_box_curves(curves, labels, FIGURES_DIR / f"{dataset}_boxacc.png")
        figures.plot_pixel_pr(curves, labels, FIGURES_DIR / f"{dataset}_pxpr.png")
        trained = [c for c in own if c not in imports]  # an imported cell has no training log
        _draw_training(trained, labels, FIGURES_DIR / f"{dataset}_training.png")
        _draw_cams(_first_seed(own), labels, settings, FIGURES_DIR / f"{dataset}_cams.png")
        log.info("report: %s (%d cells) -> %s, %s", dataset, len(own), TABLES_DIR, FIGURES_DIR)
    write_comparison(cells, CELLS_DIR, TABLES_DIR)
    return tables


def _draw_training(trained: list[Cell], labels: Mapping[tuple[str, str], str], path: Path) -> None:
    """The training curves of the cells dawsol trained, saying whose logs are missing; where no cell has its log
    (a fresh clone), ``_keep_or_note``."""
    from dawsol.report import figures

    logged = [c for c in trained if train_log_path(c).is_file()]
    missing = _missing(trained, logged, train_log_path, "training log", NOT_IN_GIT["train_log"])
    if trained and not logged:
        _keep_or_note(path, "no training curves drawn", missing)
        return
    figures.plot_training(figures.read_train_logs(logged, RUNS_DIR), labels, path, _warn(missing))


def _draw_cams(first: list[Cell], labels: Mapping[tuple[str, str], str], settings: Settings, path: Path) -> None:
    """The CAMs of the first seed of each method on the same test images, saying whose samples are missing; without
    the test split or any cell's samples (a fresh clone), ``_keep_or_note``."""
    from dawsol.report import figures

    unprepared = missing_test_split(settings)
    if unprepared:
        _keep_or_note(path, "no CAMs drawn", unprepared)
        return
    sampled = [c for c in first if _cam_samples_path(c).is_file()]
    missing = _missing(first, sampled, _cam_samples_path, "CAM samples", NOT_IN_GIT["cams"])
    if not sampled:
        _keep_or_note(path, "no CAMs drawn", missing)
        return
    figures.plot_cams(
        sampled,
        [labels[(c.backbone, c.method)] for c in sampled],
        CELLS_DIR,
        settings.dataset_dir,
        Path(settings.data.mask_root) if settings.data.mask_root else None,
        path,
        _warn(missing),
    )


def _keep_or_note(path: Path, what: str, why: str) -> None:
    """A figure with nothing to draw: the one at ``path`` is kept (a result this report cannot draw again, e.g.
    a committed figure on a fresh clone), and only where there is none, a figure of ``what``: ``why``."""
    from dawsol.report import figures

    if path.is_file():
        _warn(f"kept {path.as_posix()}: {why}")
    else:
        figures.save_note(path, _warn(f"{what}: {why}"))


def _cam_samples_path(cell: Cell) -> Path:
    return evaluate_outputs(cell)["cam_samples"]


def _warn(note: str) -> str:
    """Log what the report could not draw or recompute, if anything; return it (for the figure or table)."""
    if note:
        log.warning("report: %s", note)
    return note


def _missing(cells: list[Cell], present: list[Cell], path: Callable[[Cell], Path], what: str, why: str) -> str:
    """A note on the cells in ``cells`` but not in ``present`` (files a fresh clone lacks), or ""."""
    absent = [c for c in cells if c not in present]
    if not absent:
        return ""
    return f"{len(absent)} of {len(cells)} cells without {what} (e.g. {path(absent[0]).as_posix()}): {why}"


def _labels(cells: list[Cell]) -> dict[tuple[str, str], str]:
    several = len({c.backbone for c in cells}) > 1
    return {
        (c.backbone, c.method): f"{method_label(c)} ({BACKBONE_NAMES.get(c.backbone, c.backbone)})"
        if several
        else method_label(c)
        for c in cells
    }


def _first_seed(cells: list[Cell]) -> list[Cell]:
    """The lowest-seed cell of each (backbone, method), in grid order."""
    first: dict[tuple[str, str], Cell] = {}
    for cell in cells:
        key = (cell.backbone, cell.method)
        if key not in first or cell.seed < first[key].seed:
            first[key] = cell
    return list(first.values())


def log_summary(tables: Mapping[str, Table], params: Mapping[str, Any], source: str | Path) -> str:
    """The grid's MLflow parent run, with the grid's cell runs and summary runs nested under it; return its id.

    One run per grid and code version (tag ``dawsol.grid``, a digest of the cells and the code
    versions of their results), reused by every ``dawsol report``: named ``grid <code> · <n>
    cells of <datasets>``, tagged ``dawsol.kind`` = ``grid``, carrying the tables (the reported vs
    reproduced one included) and figures as artifacts, the CSV tables also as MLflow tables. No
    metrics of its own: each row of the tables is a summary run under it (``report.tracked``), whose
    metrics are the row's seed means and stds.
    """
    cells = [c for c in grid_cells(params, source) if c.trial is None]
    versions = sorted({version for table in tables.values() for version in table.code_versions})
    code = versions[0] if len(versions) == 1 else f"of {len(versions)} code versions" if versions else "unknown code"
    key = tree_digest({"cells": [c.name for c in cells], "code": versions})
    client, experiment_id = tracking.init_store()
    name = f"grid {code} · {len(cells)} cells of {', '.join(tables)}"
    parent = tracking.parent_run(client, experiment_id, GRID_TAG, key, name, "report")
    parent.set_tag(tracking.RUN_KIND_TAG, tracking.GRID_KIND)
    if LEGACY_GRID_TAG in tracking.with_retry(client.get_run, parent.run_id).data.tags:  # a grid run made before
        tracking.with_retry(client.delete_tag, parent.run_id, LEGACY_GRID_TAG)  # dawsol.kind named it
    tracking.nest(client, experiment_id, parent, [c.name for c in cells])
    rows = summaries(cells, CELLS_DIR)
    tracking.sync_summaries(client, experiment_id, parent, rows)
    tracking.share_results_view(client, experiment_id, *results_columns(rows))
    outputs = report_outputs(params, source)
    for path in outputs["tables"] + outputs["figures"]:
        if path.is_file():
            parent.log_artifact(path, path.parent.name)
    log_tables(parent, outputs["tables"])
    parent.finish()
    return parent.run_id
