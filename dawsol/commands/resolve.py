"""``dawsol resolve <cell>``: print one cell's resolved settings."""

from __future__ import annotations

import argparse
import json

import yaml

from dawsol.config import load_params, resolve

HELP = "print the fully resolved settings of one cell (YAML, or JSON with --json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cell", help="<dataset>/<backbone>/<wsol>-<da>/seed<k>")
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")


def run(args: argparse.Namespace) -> int:
    settings = resolve(args.cell, load_params(args.params, args.profile), args.params)
    tree = settings.to_dict()
    print(json.dumps(tree, indent=2, sort_keys=True) if args.json else yaml.safe_dump(tree, sort_keys=False), end="")
    return 0
