# train: one job per cell; re-runs when the settings that decide its weights change (all but `eval`).
rule train:
    input:
        data=cell_data,
    output:
        **as_pattern(layout.train_outputs("{cell}")),
    wildcard_constraints:
        cell=TRAINED_CELLS if IMPORTS else CELL_PATTERN,
    params:
        settings=cell_weights_digest,
        command=lambda wildcards: dawsol("train", wildcards.cell),
    log:
        "logs/train/{cell}.log",
    benchmark:
        "benchmarks/rules/train/{cell}.tsv"
    threads: cell_threads
    resources:
        mem_mb=4000,
        runtime=60,
        # params.yaml resources.train_gpus; dawsol train runs a multi-GPU cell under torchrun
        gpu=lambda wildcards: stages.train_gpus(PARAMS_TREE, wildcards.cell),
    shell:
        THREADS_ENV + "{params.command} > {log} 2>&1"


# import_checkpoint: an imported cell's checkpoint from its file (params.yaml `imports`); no training.
rule import_checkpoint:
    input:
        source=lambda wildcards: IMPORTS[wildcards.cell],
    output:
        checkpoint=layout.checkpoint_path("{cell}").as_posix(),
    wildcard_constraints:
        cell=IMPORTED_CELLS,
    params:
        settings=cell_weights_digest,
        command=lambda wildcards: dawsol("import-checkpoint", IMPORTS[wildcards.cell], "--cell", wildcards.cell),
    log:
        "logs/import/{cell}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    shell:
        THREADS_ENV + "{params.command} > {log} 2>&1"
