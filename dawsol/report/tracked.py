"""What ``dawsol report`` shows in MLflow beside its files: a summary run per table row and the tables.

The summary runs (``dawsol.tracking.summary``) are one per (dataset, backbone, method, extractor) of the
grid's cells: metrics ``<split>.<metric>.mean`` and ``.std`` over the seeds for the test and val splits,
and ``seeds``; the UI's results view lists them as the results table (``results_columns``). The tables
are the report's CSV files (the numbers of every results table, the reported vs reproduced one
included), logged as MLflow tables ``tables/<name>.json``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from dawsol.config import Cell
from dawsol.report.tables import aggregate, load_metrics
from dawsol.tracking import CellRun, metric_items
from dawsol.tracking.summary import Summary, log_table

SPLITS = ("test", "val")
DECIMALS = 2  # of the summary metrics (percent): the runs table shows a float's every digit
HEADLINE = "test.MaxBoxAccV2.mean"  # the results view's order, best first (the paper's headline metric)


def summaries(cells: Sequence[Cell], cells_dir: Path) -> list[Summary]:
    """One summary per row of the grid's results tables (cells and their post-hoc maps; not the baselines),
    in the grid's order, named ``<method>/mean · <dataset>/<backbone>`` after the cell runs' names; the means
    and stds are the tables' own (``aggregate``)."""
    frames = {split: load_metrics(cells, cells_dir, split) for split in SPLITS}
    out = []
    for dataset in dict.fromkeys(cell.dataset for cell in cells):
        tables = {split: aggregate(frame, dataset) for split, frame in frames.items()}
        stats = {split: table.stats.set_index(["backbone", "method"]) for split, table in tables.items()}
        for (backbone, method), test in stats["test"].iterrows():
            cell_method, _, extractor = method.partition("/")
            wsol, da = cell_method.split("-", 1)
            nested: dict[str, object] = {"seeds": int(test["seeds"])}
            for split, table in tables.items():
                row = stats[split].loc[(backbone, method)]
                nested[split] = {m: {s: row[f"{m}_{s}"] for s in ("mean", "std")} for m in table.metrics}
            out.append(
                Summary(
                    key=f"{dataset}/{backbone}/{method}",
                    name=f"{method}/mean · {dataset}/{backbone}",
                    metrics={name: round(value, DECIMALS) for name, value in metric_items(nested)},
                    tags={
                        "dataset": dataset,
                        "backbone": backbone,
                        "wsol": wsol,
                        "da": da,
                        "extractor": extractor or "cam",
                        "label": str(test["label"]).replace("$", ""),
                    },
                )
            )
    return out


def results_columns(rows: Sequence[Summary]) -> tuple[list[str], str]:
    """The results view's metric columns (every ``test.*`` mean and std, then ``seeds``) and its order metric."""
    names = list(dict.fromkeys(name for row in rows for name in row.metrics))
    columns = [name for name in names if name.startswith("test.")] + [name for name in names if name == "seeds"]
    means = [name for name in columns if name.endswith(".mean")]
    return columns, HEADLINE if HEADLINE in means else means[0] if means else "seeds"


def log_tables(run: CellRun, paths: Iterable[Path]) -> list[str]:
    """Each report CSV among ``paths`` as the MLflow table ``tables/<stem>.json`` of ``run``; their names."""
    logged = []
    for path in paths:
        if path.suffix == ".csv" and path.is_file():
            name = f"tables/{path.stem}.json"
            log_table(run, pd.read_csv(path), name)
            logged.append(name)
    return logged
