# dawsol: the main job. `snakemake --cores all` runs the grid of params.yaml end to end:
# prepare (per dataset) -> train (per cell) -> evaluate (per cell) -> report.
# Every rule calls the `dawsol` CLI; no stage logic lives here (see docs/architecture.md).
# `--config profile=NAME` selects a named overlay of params.yaml (e.g. the paper's grid).
from dawsol.config import validate_params


configfile: "params.yaml"


PROFILE = config.pop("profile", None)
# the schema with its component names filled in from the records (dawsol.components)
validate_params(config, "params.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


onstart:
    # One MLflow store for every cell, created before parallel jobs write to it.
    shell("dawsol tracking init -q")


localrules:
    all,


# Every cell's evaluation is a target, not only the report: a fresh clone has the committed
# tables, figures and metrics.json but not the uncommitted CAM samples, so the main job trains
# and evaluates every cell again instead of finding the committed report up to date.
rule all:
    default_target: True
    input:
        REPORT_FILES,
        [path.as_posix() for cell in CELLS for path in layout.evaluate_outputs(cell).values()],
