"""``dawsol resolve <cell> [KEY=VALUE ...]``: print one cell's resolved settings, or with ``--diff`` what changed."""

from __future__ import annotations

import argparse
import json
import logging

import yaml

from dawsol.commands.cell_args import add_cell_arguments, cell_settings
from dawsol.config import grid_cells

log = logging.getLogger(__name__)

HELP = "print the fully resolved settings of one cell (YAML, or JSON with --json), or with --diff what changed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cell_arguments(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    output.add_argument(
        "--diff",
        action="store_true",
        help="print the settings that changed since the cell last ran (its checkpoint, runs/<cell>/resolved.json, "
        "metrics.json), as dotted keys old -> new: why Snakemake or DVC re-runs it",
    )


def run(args: argparse.Namespace) -> int:
    params, settings = cell_settings(args)
    if settings.cell not in grid_cells(params, args.params):
        where = f"profile {args.profile}" if args.profile else args.params
        log.warning("%s is not a cell of the grid of %s: the pipeline does not run it", settings.cell.name, where)
    if warning := settings.da_never_active():
        log.warning(warning)
    if args.diff:
        from dawsol.pipeline.settings_diff import diff_lines  # imports torch (the checkpoint)

        print("\n".join(diff_lines(settings)))
        return 0
    tree = settings.to_dict()
    print(json.dumps(tree, indent=2, sort_keys=True) if args.json else yaml.safe_dump(tree, sort_keys=False), end="")
    return 0
