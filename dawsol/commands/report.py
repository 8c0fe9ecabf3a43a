"""``dawsol report``: the results tables and figures of the grid, and an MLflow summary run."""

from __future__ import annotations

import argparse

HELP = (
    "write results/tables/<dataset>.{tex,csv,md,html} and results/figures/*.png from the cells' results, "
    "and results/search/ from a search's trials"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-tracking", action="store_true", help="do not log the summary run to MLflow")


def run(args: argparse.Namespace) -> int:
    from dawsol.config import load_params
    from dawsol.report import build_report, build_search, log_summary
    from dawsol.search.select import log_search

    params = load_params(args.params, args.profile)
    tables = build_report(params, args.params)
    search = build_search(params, args.params)
    for dataset in tables:
        print(f"results/tables/{dataset}.md")
    if search is not None:
        print(*(path.as_posix() for path in search.files), sep="\n")
    if not args.no_tracking:
        if tables:
            log_summary(tables, params, args.params)
        if search is not None:
            log_search(search.trials, search.chosen, search.files)
    return 0
