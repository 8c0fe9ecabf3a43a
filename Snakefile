# dawsol: the main job. `snakemake --cores all` runs the grid of params.yaml end to end.
# Every rule calls the `dawsol` CLI; no stage logic lives here (see docs/architecture.md).
from snakemake.utils import validate

configfile: "params.yaml"
validate(config, "workflow/schemas/params.schema.yaml")

include: "workflow/rules/common.smk"

rule all:
    input:
        expand("results/cells/{cell}/settings.yaml", cell=CELLS),

rule resolve:
    output:
        "results/cells/{dataset}/{backbone}/{method}/seed{seed}/settings.yaml",
    log:
        "logs/resolve/{dataset}/{backbone}/{method}/seed{seed}.log",
    shell:
        "dawsol resolve {wildcards.dataset}/{wildcards.backbone}/{wildcards.method}/seed{wildcards.seed}"
        " --params {PARAMS} > {output} 2> {log}"
