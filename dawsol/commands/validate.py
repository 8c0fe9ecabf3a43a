"""``dawsol validate <dataset-dir>``: check a prepared dataset's metadata and files."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from dawsol.commands.prepare import data_settings
from dawsol.config import load_params
from dawsol.errors import DawsolError

HELP = "check a prepared dataset (metadata format, ids, labels, boxes; decode every image and mask file)"
MAX_LISTED = 200
DEFAULT_WORKERS = min(os.cpu_count() or 1, 8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", type=Path, help="the dataset folder, e.g. data/synthetic")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="labels must lie in 0..N-1 (default: data.num_classes of the dataset named like the folder in params)",
    )
    parser.add_argument(
        "--mask-root",
        type=Path,
        default=None,
        help="folder the mask paths are relative to (default: data.mask_root from params, else the dataset folder)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"threads reading the image and mask files (default: min(cores, 8) = {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="read only the image headers (sizes, file types), not every pixel: misses truncated or corrupt data",
    )


def _data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``defaults.data`` merged with ``datasets.<folder name>.data``, or {} for an unknown dataset."""
    if not Path(args.params).is_file():
        return {}
    params = load_params(args.params, args.profile)
    name = args.dataset_dir.resolve().name
    if name not in params["datasets"]:
        return {}
    return data_settings(params, name)


def run(args: argparse.Namespace) -> int:
    from dawsol.data.metadata import validate_dataset

    data = _data_settings(args)
    num_classes = args.num_classes if args.num_classes is not None else data.get("num_classes")
    mask_root = args.mask_root if args.mask_root is not None else data.get("mask_root")
    problems = validate_dataset(
        args.dataset_dir,
        mask_root=mask_root,
        num_classes=num_classes,
        decode=not args.fast,
        workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    if problems:
        for problem in problems[:MAX_LISTED]:
            print(problem, file=sys.stderr)
        if len(problems) > MAX_LISTED:
            print(f"... and {len(problems) - MAX_LISTED} more", file=sys.stderr)
        raise DawsolError(
            f"{args.dataset_dir}: {len(problems)} problem(s) listed above; fix them or re-run `dawsol prepare`"
        )
    print(f"{args.dataset_dir}: valid{' (headers only: --fast)' if args.fast else ''}")
    return 0
