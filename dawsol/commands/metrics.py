"""``dawsol metrics``: the WSOL metrics of one split's CAM files (or a baseline), standalone."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "evaluate one split's CAMs (<cams>/<image_id>.npy) or a baseline under the WSOL protocol"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metadata", required=True, type=Path, help="the split's metadata folder, e.g. data/cub/metadata/test"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cams", type=Path, help="folder of <image_id>.npy files, one 2-D map per image, any size")
    source.add_argument(
        "--baseline",
        choices=["center", "random", "oracle"],
        help="evaluate a centred Gaussian, seeded 16x16 noise or the ground truth instead",
    )
    parser.add_argument(
        "--mask-root", type=Path, default=None, help="root of the mask PNGs (default: the dataset folder)"
    )
    parser.add_argument("--predictions", type=Path, default=None, help="CSV of image_id,predicted_class for Top-1 Loc")
    parser.add_argument("--cam-curve-interval", type=float, default=0.001, help="CAM threshold step (default: 0.001)")
    parser.add_argument(
        "--iou-thresholds",
        type=int,
        nargs="+",
        default=[30, 50, 70],
        help="IoU thresholds in percent (default: 30 50 70)",
    )
    parser.add_argument("--size", type=int, default=224, help="evaluation size: CAMs and ground truth at size x size")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--out", required=True, type=Path, help="metrics JSON file to write")
    parser.add_argument("--curves", type=Path, default=None, help="curves CSV (default: <out>.curves.csv beside --out)")


def run(args: argparse.Namespace) -> int:
    from dawsol.config import validate_params
    from dawsol.errors import DawsolError
    from dawsol.protocol import metrics_dict, write_curves, write_metrics
    from dawsol.protocol.evaluator import evaluate_split

    validate_params(args.cam_curve_interval, "--cam-curve-interval", definition="cam_curve_interval")
    validate_params(args.size, "--size", definition="image_side")
    validate_params(args.workers, "--workers", definition="workers")
    if any(not 0 < d <= 100 for d in args.iou_thresholds):
        raise DawsolError(f"--iou-thresholds must lie in 1..100, got {args.iou_thresholds}")
    if args.size < 2:
        raise DawsolError(f"--size must be at least 2, got {args.size}")
    box, mask = evaluate_split(
        args.metadata,
        args.cams,
        mask_root=args.mask_root,
        predictions=args.predictions,
        cam_curve_interval=args.cam_curve_interval,
        iou_thresholds=args.iou_thresholds,
        size=args.size,
        workers=args.workers,
        baseline=args.baseline,
        progress=not args.quiet,
    )
    metrics = metrics_dict(box, mask, args.iou_thresholds)
    curves = args.curves or args.out.with_name(args.out.name.removesuffix(".json") + ".curves.csv")
    write_metrics(args.out, metrics)
    write_curves(curves, {args.metadata.name: (box, mask)}, args.iou_thresholds)
    shown = {k: metrics[k] for k in ("MaxBoxAccV2", "MaxBoxAcc", "GT-known Loc", "Top-1 Loc", "PxAP", "pIoU")}
    log.info("%s: %s; wrote %s and %s", args.metadata, shown, args.out, curves)
    return 0
