# evaluate: val (threshold/model selection) and test metrics, curves and CAM samples per cell.
rule evaluate:
    input:
        data=cell_data,
        checkpoint=layout.train_outputs("{cell}")["checkpoint"].as_posix(),
    output:
        **as_pattern(layout.evaluate_outputs("{cell}")),
    params:
        settings=cell_digest,
        command=lambda wildcards: dawsol("evaluate", wildcards.cell),
    log:
        "logs/evaluate/{cell}.log",
    benchmark:
        "benchmarks/rules/evaluate/{cell}.tsv"
    threads: cell_threads
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    shell:
        THREADS_ENV + "{params.command} > {log} 2>&1"
