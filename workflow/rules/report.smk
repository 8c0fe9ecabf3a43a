# report: tables, figures and DVC plot data over every cell; the tables and figures go into
# `snakemake --report results/report.html` with the captions in workflow/report/.


rule report:
    input:
        data=list(DATA_DIRS.values()),
        cells=[path.as_posix() for path in layout.report_inputs(PARAMS_TREE, PARAMS)],
    output:
        report_targets(),
    params:
        # a search's selection (search.metrics, search.space) changes the report only
        search=tree_digest(PARAMS_TREE.get("search")),
        command=dawsol("report"),
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/rules/report.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    shell:
        THREADS_ENV + "{params.command} > {log} 2>&1"
