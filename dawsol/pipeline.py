"""What each pipeline stage reads and writes, for Snakemake and DVC alike.

The Snakefile's rules and the generated ``dvc.yaml`` both take their stages, commands and
paths from here, so the two front doors declare the same cells and the same outputs. The
paths follow the cell output contract of docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dawsol.config import DEFAULT_PARAMS, Cell, grid_cells, parse_cell, resolve

DVC_YAML = Path("dvc.yaml")
RESULTS = Path("results")
CELLS_DIR = RESULTS / "cells"
TABLES_DIR = RESULTS / "tables"
FIGURES_DIR = RESULTS / "figures"
PLOTS_DIR = RESULTS / "plots"
RUNS_DIR = Path("runs")
TABLE_FORMATS = ("tex", "csv", "md", "html")
# the reported vs reproduced table over the whole grid (dawsol.report.reported)
COMPARISON_STEM = "reported_vs_reproduced"
COMPARISON_FORMATS = ("tex", "csv", "md")
FIGURE_KINDS = ("cams", "boxacc", "pxpr", "training")


def dataset_dir(params: Mapping[str, Any], dataset: str, source: str | Path) -> Path:
    """The prepared dataset folder of ``dataset`` (``<data.root>/<dataset>`` of its first cell)."""
    for cell in grid_cells(params, source):
        if cell.dataset == dataset:
            return resolve(cell, params, source).dataset_dir
    raise ValueError(f"dataset {dataset!r} has no cell in the grid")


def datasets(params: Mapping[str, Any], source: str | Path) -> list[str]:
    """The grid's datasets that have at least one cell, in grid order."""
    return list(dict.fromkeys(cell.dataset for cell in grid_cells(params, source)))


def prepare_params(params: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The params.yaml entries ``dawsol prepare <dataset>`` reads, by dotted key (its re-run trigger)."""
    candidates = {
        "defaults.data": params["defaults"].get("data"),
        f"datasets.{dataset}.data": (params["datasets"].get(dataset) or {}).get("data"),
        "synthetic": params.get("synthetic") if dataset == "synthetic" else None,
    }
    return {key: value for key, value in candidates.items() if value is not None}


def digest(tree: Any) -> str:
    """A short, order-independent hash of a JSON-serialisable tree."""
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def train_outputs(cell: Cell | str) -> dict[str, Path]:
    """``dawsol train``'s outputs of one cell."""
    run_dir = RUNS_DIR / str(cell)
    return {"checkpoint": run_dir / "checkpoint.pt", "train_log": run_dir / "train_log.jsonl"}


def evaluate_outputs(cell: Cell | str) -> dict[str, Path]:
    """``dawsol evaluate``'s outputs of one cell."""
    cell_dir = CELLS_DIR / str(cell)
    return {
        "metrics": cell_dir / "metrics.json",
        "curves": cell_dir / "curves.csv",
        "cams": cell_dir / "cams.png",
        "cam_samples": cell_dir / "cam_samples.npz",
    }


def settings_output(cell: Cell | str) -> Path:
    """The resolved settings of one cell, DVC's per-cell re-run trigger."""
    return RUNS_DIR / str(cell) / "resolved.json"


def method_key(cell: Cell) -> str:
    """A file-name-safe key of a cell's row in the tables: ``<backbone>_<wsol>-<da>``."""
    return f"{cell.backbone}_{cell.method}"


def report_outputs(params: Mapping[str, Any], source: str | Path) -> dict[str, list[Path]]:
    """``dawsol report``'s outputs: tables, figures and DVC plot data per dataset, and the
    reported vs reproduced table."""
    cells = grid_cells(params, source)
    tables, figures, plots = [], [], []
    for dataset in datasets(params, source):
        tables += [TABLES_DIR / f"{dataset}.{fmt}" for fmt in TABLE_FORMATS]
        figures += [FIGURES_DIR / f"{dataset}_{kind}.png" for kind in FIGURE_KINDS]
        keys = dict.fromkeys(method_key(c) for c in cells if c.dataset == dataset)
        plots += [PLOTS_DIR / dataset / f"{key}.csv" for key in keys]
    tables += [TABLES_DIR / f"{COMPARISON_STEM}.{fmt}" for fmt in COMPARISON_FORMATS]
    return {"tables": tables, "figures": figures, "plots": plots}


def train_gpus(params: Mapping[str, Any], cell: Cell | str) -> int:
    """GPUs of a cell's training job (Snakemake ``resources: gpu``): ``resources.train_gpus.<dataset>``
    of params.yaml, 1 for a dataset not listed, 0 for CPU-only. With more than one, ``dawsol train``
    runs the cell under torchrun, one process per GPU."""
    if isinstance(cell, str):
        cell = parse_cell(cell)
    return int(params.get("resources", {}).get("train_gpus", {}).get(cell.dataset, 1))


def _slug(name: str) -> str:
    return name.replace("/", "-")


def cli(command: str, *args: str, source: str | Path, profile: str | None) -> str:
    """The shell command of one stage: ``dawsol <command> <args> [--params P] [--profile X]``."""
    words = ["dawsol", command, *args]
    if Path(source) != DEFAULT_PARAMS:
        words += ["--params", Path(source).as_posix()]
    if profile:
        words += ["--profile", profile]
    return " ".join(words)


def dvc_stages(params: Mapping[str, Any], source: str | Path, profile: str | None = None) -> dict[str, Any]:
    """The ``dvc.yaml`` tree: prepare -> settings -> train -> evaluate -> report over the grid."""
    cells = grid_cells(params, source)
    names = datasets(params, source)
    params_file = str(source)
    data_dirs = {d: dataset_dir(params, d, source).as_posix() for d in names}

    def posix(paths: Sequence[Path]) -> list[str]:
        return [p.as_posix() for p in paths]

    stages: dict[str, Any] = {}
    for dataset in names:
        stages[f"prepare_{dataset}"] = {
            "cmd": cli("prepare", dataset, source=source, profile=profile),
            "params": [{params_file: list(prepare_params(params, dataset))}],
            "outs": [data_dirs[dataset]],
        }
    # Every cell depends on the settings stage, and it re-runs on any change of the params file, so
    # it first checks that this dvc.yaml still matches the grid (`dvc exp run -S grid...` must fail,
    # not run the old cells); the check reads the params file the stage sees.
    stages["settings"] = {
        "cmd": [
            cli("dvc-yaml", "--check", source=source, profile=profile),
            cli("settings", "--out-dir", RUNS_DIR.as_posix(), source=source, profile=profile),
        ],
        "params": [{params_file: None}],
        "outs": [{p: {"cache": False}} for p in posix([settings_output(c) for c in cells])],
    }
    items = {_slug(c.name): {"cell": c.name, "data": data_dirs[c.dataset], **_cell_paths(c)} for c in cells}
    stages["train"] = {
        "foreach": items,
        "do": {
            "cmd": cli("train", "${item.cell}", source=source, profile=profile),
            "deps": ["${item.settings}", "${item.data}"],
            "outs": ["${item.checkpoint}", "${item.train_log}"],
        },
    }
    stages["evaluate"] = {
        "foreach": items,
        "do": {
            "cmd": cli("evaluate", "${item.cell}", source=source, profile=profile),
            "deps": ["${item.settings}", "${item.data}", "${item.checkpoint}"],
            "outs": [{f"${{item.{k}}}": {"cache": False}} for k in ("curves", "cams", "cam_samples")],
            "metrics": [{"${item.metrics}": {"cache": False}}],
        },
    }
    report_outs = report_outputs(params, source)
    report_deps = [data_dirs[d] for d in names]
    for c in cells:
        report_deps += posix([*evaluate_outputs(c).values(), train_outputs(c)["train_log"]])
    stages["report"] = {
        "cmd": cli("report", source=source, profile=profile),
        "params": [{params_file: ["grid"]}],
        "deps": report_deps,
        "outs": [{p: {"cache": False}} for p in posix(report_outs["tables"] + report_outs["plots"])],
        "plots": [{p: {"cache": False}} for p in posix(report_outs["figures"])],
    }
    return {"stages": stages, "plots": _dvc_plots(params, source)}


def _cell_paths(cell: Cell) -> dict[str, str]:
    paths = {**train_outputs(cell), **evaluate_outputs(cell), "settings": settings_output(cell)}
    return {key: path.as_posix() for key, path in paths.items()}


def _dvc_plots(params: Mapping[str, Any], source: str | Path) -> list[dict[str, Any]]:
    """Top-level DVC plots: per dataset, BoxAcc vs threshold and pixel precision vs recall per method."""
    plots: list[dict[str, Any]] = []
    outs = report_outputs(params, source)["plots"]
    for dataset in datasets(params, source):
        files = [p.as_posix() for p in outs if p.parent.name == dataset]
        plots.append(
            {
                f"{dataset}: BoxAcc at IoU 50 vs CAM threshold (test)": {
                    "x": "threshold",
                    "y": {f: "BoxAcc_50" for f in files},
                    "x_label": "CAM threshold",
                    "y_label": "BoxAcc (%)",
                }
            }
        )
        plots.append(
            {
                f"{dataset}: pixel precision vs recall (test)": {
                    "x": {f: "recall" for f in files},
                    "y": {f: "precision" for f in files},
                    "x_label": "recall",
                    "y_label": "precision",
                }
            }
        )
    return plots


def render_dvc_yaml(params: Mapping[str, Any], source: str | Path, profile: str | None = None) -> str:
    """The text of the generated ``dvc.yaml``."""
    header = (
        "# Generated by `dawsol dvc-yaml` from params.yaml: do not edit by hand.\n"
        "# After changing the grid, run `dawsol dvc-yaml` again: until then the settings stage fails.\n"
    )
    return header + yaml.dump(dvc_stages(params, source, profile), Dumper=_NoAliasDumper, sort_keys=False, width=120)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated subtrees in full (DVC users read dvc.yaml; anchors would obscure it)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
