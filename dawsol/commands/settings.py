"""``dawsol settings``: write every grid cell's resolved settings, DVC's per-cell re-run trigger.

The files are renamed into place together once every cell resolved (``dawsol.atomic.staged``):
a bad cell or a full disk leaves every old file as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from dawsol.atomic import atomic_write_text, staged
from dawsol.config import grid_cells, load_params, resolve
from dawsol.layout import RUNS_DIR, settings_output, weights_settings_output

log = logging.getLogger(__name__)

HELP = (
    "write runs/<cell>/resolved.json (the resolved settings) and resolved_weights.json (all but eval) "
    "for every cell of the grid"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", default=str(RUNS_DIR), help="folder of the per-cell files (default: runs)")


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.profile)
    with staged():
        for cell in grid_cells(params, args.params):
            settings = resolve(cell, params, args.params)
            if warning := settings.da_never_active():
                log.warning(warning)
            outputs = (
                (settings_output(cell), settings.to_dict()),
                (weights_settings_output(cell), settings.weights_dict()),
            )
            for output, content in outputs:
                path = Path(args.out_dir) / output.relative_to(RUNS_DIR)
                text = json.dumps(content, indent=2, sort_keys=True) + "\n"
                if not path.is_file() or path.read_text() != text:  # an unchanged file keeps DVC's stage up to date
                    atomic_write_text(path, text)
    return 0
