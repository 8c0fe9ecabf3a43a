"""``dawsol localize (--checkpoint PATH | --imagenet BACKBONE) IMAGE...``: CAMs and boxes on your own images."""

from __future__ import annotations

import argparse

from dawsol.components.backbones import BACKBONES

HELP = (
    "draw the CAM and boxes of the top classes on your own images and write them (localization.json, .csv): "
    "a trained checkpoint or an ImageNet classifier"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files (any format PIL reads)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a runs/<cell>/checkpoint.pt")
    model.add_argument(
        "--imagenet",
        metavar="BACKBONE",
        help="an ImageNet-pretrained classifier as it is, no training: "
        + ", ".join(name for name, record in BACKBONES.items() if record.classifier_trunk is not None),
    )
    parser.add_argument("--out", default="localized", help="output folder (default: localized)")
    parser.add_argument("--top-k", type=int, default=None, help="classes listed per image (default: 5 ImageNet, 1)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="CAM threshold for the boxes (default: the checkpoint's last validation's choice; 0.2 for --imagenet)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dawsol.evaluation.localize import checkpoint_localizer, imagenet_localizer, localize
    from dawsol.runtime import select_device

    device = select_device(args.device)
    if args.imagenet:
        localizer = imagenet_localizer(args.imagenet, device, args.threshold)
        top_k = 5 if args.top_k is None else args.top_k
    else:
        localizer = checkpoint_localizer(Path(args.checkpoint), device, args.threshold)
        top_k = 1 if args.top_k is None else args.top_k
    for path in localize(localizer, [Path(p) for p in args.images], Path(args.out), top_k):
        print(path)
    return 0
