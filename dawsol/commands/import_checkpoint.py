"""``dawsol import-checkpoint FILE --cell CELL``: an official DA-WSOL or wsolevaluation checkpoint as a cell's."""

from __future__ import annotations

import argparse

HELP = (
    "import an official DA-WSOL/BagCAMs or wsolevaluation checkpoint as runs/<cell>/checkpoint.pt, "
    "to evaluate without training"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the official checkpoint (e.g. last_checkpoint.pth.tar); read with weights_only")
    parser.add_argument(
        "--cell",
        default=None,
        help="<dataset>/<backbone>/<wsol>-<da>/seed<k> whose settings fit the file (large_feature_map included)",
    )
    parser.add_argument(
        "--inspect", action="store_true", help="only print what the file is (format, architecture, K, epoch)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dawsol.checkpoints.importer import import_checkpoint, inspect_file
    from dawsol.config import load_params, resolve
    from dawsol.errors import DawsolError

    source = Path(args.file)
    if args.inspect:
        print(inspect_file(source))
        return 0
    if args.cell is None:
        raise DawsolError("import-checkpoint: give --cell CELL to import the file into (or --inspect to describe it)")
    settings = resolve(args.cell, load_params(args.params, args.profile), args.params)
    result = import_checkpoint(source, settings)
    print(result.summary(source))
    return 0
