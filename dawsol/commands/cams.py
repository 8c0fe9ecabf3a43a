"""``dawsol cams --checkpoint CKPT --method M --split S --out DIR``: a checkpoint's maps as ``<image_id>.npy`` files."""

from __future__ import annotations

import argparse

from dawsol.components.extractors import EXTRACTORS

HELP = f"write one extractor's score maps ({', '.join(EXTRACTORS)}) of a checkpoint on a split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a runs/<cell>/checkpoint.pt")
    # no argparse choices: a wrong name is dawsol's one line listing the valid ones, not a usage dump
    parser.add_argument("--method", required=True, help=f"the extractor: {', '.join(EXTRACTORS)}")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--out", required=True, help="output folder: <out>/<image_id>.npy")
    parser.add_argument("--layer", default=None, help="target layer of the gradient methods (default: the cell's)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dawsol.evaluation.cam_files import write_cam_files
    from dawsol.runtime import select_device

    count = write_cam_files(
        Path(args.checkpoint), args.method, args.split, Path(args.out), select_device(args.device), args.layer
    )
    print(f"{args.out}: {count} score maps ({args.method}, {args.split})")
    return 0
