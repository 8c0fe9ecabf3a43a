"""The arguments of the commands that resolve one cell: the cell and its command-line overrides."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from dawsol.config import Settings, apply_overrides, load_params, resolve

log = logging.getLogger(__name__)

OVERRIDES_HELP = (
    "settings overrides as dotted KEY=VALUE (e.g. train.epochs=2 eval.iou_thresholds=[30,50]): "
    'the same as writing them in params.yaml cells."<cell>"'
)


def add_cell_arguments(parser: argparse.ArgumentParser) -> None:
    """The positional cell and any number of ``KEY=VALUE`` overrides after it."""
    parser.add_argument("cell", help="<dataset>/<backbone>/<wsol>-<da>/seed<k>")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)


def cell_settings(args: argparse.Namespace) -> tuple[dict[str, Any], Settings]:
    """The params (with the overrides in the cell's ``cells`` block) and the cell's resolved settings."""
    params = apply_overrides(load_params(args.params, args.profile), args.cell, args.overrides)
    settings = resolve(args.cell, params, args.params)
    if args.overrides:
        log.info("%s with overrides %s: settings digest %s", settings.cell, " ".join(args.overrides), settings.digest())
    return params, settings
