"""``dawsol localize --checkpoint PATH IMAGE...``: CAMs and boxes on your own images."""

from __future__ import annotations

import argparse

HELP = "draw the CAM and predicted boxes of a trained checkpoint on your own images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files (any format OpenCV/PIL reads)")
    parser.add_argument("--checkpoint", required=True, help="a runs/<cell>/checkpoint.pt")
    parser.add_argument("--out", default="localized", help="output folder (default: localized)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="CAM threshold for the boxes (default: the best threshold of the checkpoint's last validation)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dawsol.localize import localize

    for path in localize(
        Path(args.checkpoint), [Path(p) for p in args.images], Path(args.out), args.device, args.threshold
    ):
        print(path)
    return 0
