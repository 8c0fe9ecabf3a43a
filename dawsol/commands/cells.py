"""``dawsol cells``: list the grid's cells."""

from __future__ import annotations

import argparse

from dawsol.config import grid_cells, load_params

HELP = "list the cells of the grid in params.yaml, one per line"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead")


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.profile)
    names = [cell.name for cell in grid_cells(params, args.params)]
    if args.json:
        import json

        print(json.dumps(names))
    else:
        print("\n".join(names))
    return 0
