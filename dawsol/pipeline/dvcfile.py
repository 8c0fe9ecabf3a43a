"""The generated ``dvc.yaml``: DVC's stages, deps, outs, metrics and plots over the grid of params.yaml.

``dawsol dvc-yaml`` writes it (``--check`` compares); the stages are those of
``dawsol.pipeline.stages`` and the paths those of ``dawsol.layout``, so DVC declares what Snakemake does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dawsol.config import Cell, grid_cells, grid_datasets, grid_imports, parse_cell
from dawsol.layout import (
    RUNS_DIR,
    evaluate_outputs,
    report_inputs,
    report_outputs,
    settings_output,
    train_outputs,
    weights_settings_output,
)
from dawsol.pipeline.stages import cli, dataset_dir, prepare_params


def _slug(name: str) -> str:
    return name.replace("/", "-")


def dvc_stages(params: Mapping[str, Any], source: str | Path, profile: str | None = None) -> dict[str, Any]:
    """The ``dvc.yaml`` tree: prepare -> settings -> train -> evaluate -> report over the grid."""
    cells = grid_cells(params, source)
    names = grid_datasets(params, source)
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
        # cached, so `dvc pull` restores them: they are every cell stage's inputs, and `dvc repro --dry` hashes
        # each input of a stage it would run and stops at a missing one (treeverse/dvc#9818)
        "outs": posix([path for c in cells for path in (settings_output(c), weights_settings_output(c))]),
    }
    imports = grid_imports(params, source)
    items = {_slug(c.name): {"cell": c.name, "data": data_dirs[c.dataset], **_cell_paths(c)} for c in cells}
    trained = {key: item for key, item in items.items() if parse_cell(item["cell"]) not in imports}
    if trained:
        stages["train"] = {
            "foreach": trained,
            "do": {
                "cmd": cli("train", "${item.cell}", source=source, profile=profile),
                "deps": ["${item.weights_settings}", "${item.data}"],
                "outs": ["${item.checkpoint}", "${item.train_log}"],
            },
        }
    if imports:  # imported cells: the checkpoint from its file, no training
        imported = {
            key: {**item, "source": imports[parse_cell(item["cell"])].as_posix()}
            for key, item in items.items()
            if parse_cell(item["cell"]) in imports
        }
        stages["import"] = {
            "foreach": imported,
            "do": {
                "cmd": cli(
                    "import-checkpoint", "${item.source}", "--cell", "${item.cell}", source=source, profile=profile
                ),
                "deps": ["${item.weights_settings}", "${item.source}"],
                "outs": ["${item.checkpoint}"],
            },
        }
    stages["evaluate"] = {
        "foreach": items,
        "do": {
            "cmd": cli("evaluate", "${item.cell}", source=source, profile=profile),
            "deps": ["${item.settings}", "${item.data}", "${item.checkpoint}"],
            # committed to git, but cam_samples (a report input that git ignores) is cached, for `dvc pull`
            "outs": [
                *({f"${{item.{k}}}": {"cache": False}} for k in ("metrics", "curves", "posthoc_curves", "cams")),
                "${item.cam_samples}",
            ],
            # the headline numbers only: every string, threshold and count of metrics.json would be a column
            "metrics": [{"${item.headline}": {"cache": False}}],
        },
    }
    report_outs = report_outputs(params, source)
    report_deps = [data_dirs[d] for d in names] + posix(report_inputs(params, source))
    committed = report_outs["tables"] + report_outs["plots"] + report_outs["search"] + report_outs["baselines"]
    stages["report"] = {
        "cmd": cli("report", source=source, profile=profile),
        "params": [{params_file: ["grid", "search"]}],
        "deps": report_deps,
        "outs": [{p: {"cache": False}} for p in posix(committed)],
        "plots": [{p: {"cache": False}} for p in posix(report_outs["figures"])],
    }
    return {"stages": stages, "plots": _dvc_plots(params, source)}


def _cell_paths(cell: Cell) -> dict[str, str]:
    paths = {
        **train_outputs(cell),
        **evaluate_outputs(cell),
        "settings": settings_output(cell),
        "weights_settings": weights_settings_output(cell),
    }
    return {key: path.as_posix() for key, path in paths.items()}


def _dvc_plots(params: Mapping[str, Any], source: str | Path) -> list[dict[str, Any]]:
    """Top-level DVC plots: per dataset, BoxAcc vs threshold and pixel precision vs recall per method."""
    plots: list[dict[str, Any]] = []
    outs = report_outputs(params, source)["plots"]
    for dataset in dict.fromkeys(p.parent.name for p in outs):
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
