"""``dawsol estimate``: images x epochs per cell and the device-hours a measured throughput implies."""

from __future__ import annotations

import argparse

HELP = "per cell and in total: train images x epochs, eval images and expected device-hours (measured throughput)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cells", nargs="*", help="cells to estimate (default: the grid)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="device to benchmark")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per configuration (default: 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    import json
    import logging

    from dawsol.config import load_params
    from dawsol.errors import DawsolError
    from dawsol.pipeline.estimate import estimate
    from dawsol.runtime import select_device

    if args.steps < 1:
        raise DawsolError(f"--steps {args.steps}: use at least 1 timed step")
    params = load_params(args.params, args.profile)
    device = select_device(args.device)
    log = logging.getLogger("dawsol.pipeline.estimate")

    def progress(settings, throughput) -> None:
        log.info(
            "benchmark %s/%s/%s on %s: train %.1f img/s, eval %.1f img/s",
            settings.model.backbone,
            settings.wsol.method,
            settings.da.method if settings.da else "none",
            device,
            throughput.train_images_per_s,
            throughput.eval_images_per_s,
        )

    rows = estimate(params, args.params, device, args.steps, args.cells or None, on_benchmark=progress)
    total_hours = sum(row.device_hours for row in rows)
    if args.json:
        print(
            json.dumps(
                {
                    "device": str(device),
                    "steps": args.steps,
                    "cells": [row.to_dict() for row in rows],
                    "total": {
                        "train_images": sum(row.train_images for row in rows),
                        "eval_images": sum(row.eval_images for row in rows),
                        "device_hours": total_hours,
                    },
                },
                indent=2,
            )
        )
        return 0
    width = max([len(row.cell) for row in rows] + [5])
    print(f"{'cell':<{width}}  {'train img x ep':>15}  {'eval img':>10}  {'train img/s':>11}  {'hours':>9}")
    for row in rows:
        print(
            f"{row.cell:<{width}}  {row.train_images:>15,}  {row.eval_images:>10,}  "
            f"{row.throughput.train_images_per_s:>11.1f}  {row.device_hours:>9.2f}"
        )
    print(
        f"{'total':<{width}}  {sum(r.train_images for r in rows):>15,}  {sum(r.eval_images for r in rows):>10,}  "
        f"{'':>11}  {total_hours:>9.2f}"
    )
    print(f"hours on {device} (one device per cell; measured with {args.steps} steps per configuration)")
    return 0
