"""``dawsol report``: the results tables and figures of the grid, and an MLflow summary run."""

from __future__ import annotations

import argparse

HELP = "write results/tables/<dataset>.{tex,csv,md,html} and results/figures/*.png from the cells' results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-tracking", action="store_true", help="do not log the summary run to MLflow")


def run(args: argparse.Namespace) -> int:
    from dawsol.config import load_params
    from dawsol.report import build_report, log_summary

    params = load_params(args.params, args.profile)
    tables = build_report(params, args.params)
    for dataset in tables:
        print(f"results/tables/{dataset}.md")
    if not args.no_tracking:
        log_summary(tables)
    return 0
