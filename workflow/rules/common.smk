# Shared helpers for the rules: the grid's cells, paths and commands come from dawsol
# (dawsol.config, dawsol.layout and dawsol.pipeline.stages), never re-derived here.
import re

from snakemake.logging import logger

from dawsol import layout
from dawsol.pipeline import stages
from dawsol.config import (
    CELL_PATTERN,
    grid_cells,
    grid_datasets,
    grid_imports,
    load_params,
    parse_cell,
    resolve,
    tree_digest,
)

PARAMS = "params.yaml"
PARAMS_TREE = load_params(PARAMS, PROFILE)
CELLS = grid_cells(PARAMS_TREE, PARAMS)
# imported cells (params.yaml `imports`) get their checkpoint from a file, the others from training
IMPORTS = {cell.name: path.as_posix() for cell, path in grid_imports(PARAMS_TREE, PARAMS).items()}
NEVER = "(?!)"  # a wildcard constraint that matches no cell
IMPORTED_CELLS = "|".join(re.escape(name) for name in IMPORTS) or NEVER
TRAINED_CELLS = "|".join(re.escape(c.name) for c in CELLS if c.name not in IMPORTS) or NEVER
DATASETS = grid_datasets(PARAMS_TREE, PARAMS)
DATA_DIRS = {d: stages.dataset_dir(PARAMS_TREE, d, PARAMS).as_posix() for d in DATASETS}
REPORT_OUTPUTS = layout.report_outputs(PARAMS_TREE, PARAMS)
REPORT_FILES = [p.as_posix() for group in REPORT_OUTPUTS.values() for p in group]
for warning in stages.da_warnings(PARAMS_TREE, PARAMS):  # e.g. da.start_epoch too late for train.epochs
    logger.warning(f"warning: {warning}")



wildcard_constraints:
    cell=CELL_PATTERN,


def dawsol(command, *args):
    """The CLI call of a stage, with --params / --profile as this run was given them."""
    return stages.cli(command, *args, source=PARAMS, profile=PROFILE)


def cell_data(wildcards):
    """The prepared dataset folder a cell reads."""
    return DATA_DIRS[parse_cell(wildcards.cell).dataset]


def cell_digest(wildcards):
    """The cell's resolved-settings digest: a params re-run trigger for that cell only."""
    return resolve(wildcards.cell, PARAMS_TREE, PARAMS).digest()


def cell_weights_digest(wildcards):
    """The digest of the settings that decide the cell's weights (all but `eval`): training's re-run trigger,
    so a change of e.g. eval.cam_methods re-runs evaluation only."""
    return resolve(wildcards.cell, PARAMS_TREE, PARAMS).weights_digest()


def cell_threads(wildcards):
    """The CPU threads a cell's job uses (train.threads, which dawsol applies itself): the cores Snakemake books."""
    return resolve(wildcards.cell, PARAMS_TREE, PARAMS).train.threads


def as_pattern(paths):
    """dawsol.layout's per-cell paths with the {cell} wildcard."""
    return {name: path.as_posix() for name, path in paths.items()}


def report_targets():
    """The report's outputs, tables and figures marked for the Snakemake HTML report."""
    captions = {"cams": "cams.rst", "boxacc": "boxacc.rst", "pxpr": "pxpr.rst", "training": "training.rst"}
    outputs = []
    for path in REPORT_FILES:
        name = path.rsplit("/", 1)[-1]
        stem, ext = name.rsplit(".", 1)
        if path == f"{layout.TABLES_DIR.as_posix()}/{layout.COMPARISON_STEM}.html":
            outputs.append(report(path, caption="../report/reported.rst", category="Tables", subcategory=stem))
        elif path.startswith("results/tables/") and ext == "html":
            outputs.append(report(path, caption="../report/table.rst", category="Tables", subcategory=stem))
        elif path.startswith("results/search/") and ext == "png":
            outputs.append(report(path, caption="../report/search.rst", category="Search", subcategory=stem))
        elif path.startswith("results/figures/"):
            dataset, kind = stem.rsplit("_", 1)
            outputs.append(report(path, caption=f"../report/{captions[kind]}", category="Figures", subcategory=dataset))
        else:
            outputs.append(path)
    return outputs


# Environment of every job: torch and BLAS use exactly the job's threads, so parallel jobs do
# not oversubscribe the CPU.
THREADS_ENV = "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
