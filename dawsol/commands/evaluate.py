"""``dawsol evaluate <cell>``: the protocol's metrics, curves and CAM figures of a trained cell."""

from __future__ import annotations

import argparse

HELP = (
    "evaluate a trained cell on val and test: results/cells/<cell>/{metrics.json,curves.csv,cams.png,cam_samples.npz}"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cell", help="<dataset>/<backbone>/<wsol>-<da>/seed<k>")
    parser.add_argument(
        "--predictions",
        default=None,
        help="CSV of image_id,predicted_label from a separate classifier: adds the two-stage Top-1 Loc",
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda", "mps"], default=None, help="default: train.device of the cell"
    )
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def run(args: argparse.Namespace) -> int:
    from dawsol.config import load_params, resolve
    from dawsol.evaluate import evaluate_cell

    settings = resolve(args.cell, load_params(args.params, args.profile), args.params)
    evaluate_cell(settings, device_name=args.device, predictions=args.predictions, tracking=not args.no_tracking)
    return 0
