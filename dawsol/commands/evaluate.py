"""``dawsol evaluate <cell>``: the protocol's metrics, curves and CAM figures of a trained cell."""

from __future__ import annotations

import argparse

from dawsol.commands.cell_args import add_cell_arguments, cell_settings

HELP = (
    "evaluate a trained cell on val and test: results/cells/<cell>/{metrics.json,curves.csv,cams.png,cam_samples.npz}"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cell_arguments(parser)
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
    from dawsol.threads import use_threads

    _, settings = cell_settings(args)
    use_threads(settings.train.threads)  # before torch loads below

    from dawsol.evaluation.cell import evaluate_cell

    evaluate_cell(settings, device_name=args.device, predictions=args.predictions, tracking=not args.no_tracking)
    return 0
