# prepare: one rule per dataset of the grid (its prepared folder is a directory output).
for _dataset in DATASETS:

    rule:
        name:
            f"prepare_{_dataset}"
        output:
            directory(DATA_DIRS[_dataset]),
        params:
            settings=tree_digest(stages.prepare_params(PARAMS_TREE, _dataset)),
            command=dawsol("prepare", _dataset),
        log:
            f"logs/prepare/{_dataset}.log",
        benchmark:
            f"benchmarks/rules/prepare/{_dataset}.tsv"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            gpu=0,
        shell:
            THREADS_ENV + "{params.command} > {log} 2>&1"
