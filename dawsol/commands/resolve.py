"""``dawsol resolve <cell>``: print one cell's resolved settings."""

from __future__ import annotations

import argparse
import json
import logging

import yaml

from dawsol.config import grid_cells, load_params, resolve

log = logging.getLogger(__name__)

HELP = "print the fully resolved settings of one cell (YAML, or JSON with --json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cell", help="<dataset>/<backbone>/<wsol>-<da>/seed<k>")
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.profile)
    settings = resolve(args.cell, params, args.params)
    if settings.cell not in grid_cells(params, args.params):
        where = f"profile {args.profile}" if args.profile else args.params
        log.warning("%s is not a cell of the grid of %s: the pipeline does not run it", settings.cell.name, where)
    tree = settings.to_dict()
    print(json.dumps(tree, indent=2, sort_keys=True) if args.json else yaml.safe_dump(tree, sort_keys=False), end="")
    return 0
