"""Benchmark: training and evaluation images/s per backbone, CAM against DA-WSOL and other WSOL methods, on this device.

For each backbone and WSOL method (``--wsol``, default CAM), the paper profile's cells
``<dataset>/<backbone>/<wsol>-none`` and ``<wsol>-<da>`` (the official settings: feature map,
sampling, loss; ``--params-profile`` picks another profile) run ``--steps`` timed training
steps (forward, L_c, the DA terms, backward, SGD: the training loop's own step) and as many
evaluation forward passes on random input, with ``dawsol.pipeline.estimate.benchmark``, the measurement
behind ``dawsol estimate``. ``--image-size`` / ``--batch-size`` shrink the input for a CPU;
leave them at the cell's (224, 32) on a GPU, and add ``--bf16 --channels-last`` there. Each row's
``train_cost_vs_cam`` is the CAM cell's training images/s over its own (same backbone, same run).

Usage (from the project root):
``python benchmarks/bench_throughput.py [--device cuda] [--image-size 224] [--output bench.json]``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dawsol.config import load_params, resolve  # noqa: E402
from dawsol.pipeline.estimate import benchmark  # noqa: E402
from dawsol.runtime import select_device  # noqa: E402


def settings_for(cell: str, params: dict, args: argparse.Namespace):
    """The cell's settings with the benchmark's input size, batch and CUDA options."""
    settings = resolve(cell, params)
    data = settings.data
    if args.image_size:
        data = dataclasses.replace(data, image_size=args.image_size, resize_size=args.image_size)
    train = dataclasses.replace(
        settings.train,
        batch_size=args.batch_size or settings.train.batch_size,
        bf16=args.bf16,
        channels_last=args.channels_last,
    )
    return dataclasses.replace(settings, data=data, train=train)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "inception_v3", "vgg16"])
    parser.add_argument("--dataset", default="cub", help="whose settings (default: cub)")
    parser.add_argument("--da", default="mmd", help="the DA-WSOL variant to compare with CAM (default: mmd)")
    parser.add_argument("--wsol", nargs="+", default=["cam"], help="WSOL methods (default: cam), e.g. cam acol spg")
    parser.add_argument("--params-profile", default="paper", help='the params.yaml profile (default: paper; "": none)')
    parser.add_argument("--seed", type=int, default=4, help="the cells' seed (default: 4, the paper profile's)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--image-size", type=int, default=0, help="input side (default: the cell's)")
    parser.add_argument("--batch-size", type=int, default=0, help="batch (default: the cell's)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA only)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    params = load_params(ROOT / "params.yaml", args.params_profile or None)
    device = select_device(args.device)
    rows = []
    for backbone in args.backbones:
        cam_rate = None
        for wsol in dict.fromkeys(["cam", *args.wsol]):
            for da in ("none", args.da):
                if wsol not in args.wsol and da != "none":
                    continue  # the CAM cell only as the baseline of the other methods
                cell = f"{args.dataset}/{backbone}/{wsol}-{da}/seed{args.seed}"
                settings = settings_for(cell, params, args)
                torch.manual_seed(0)
                result = benchmark(settings, device, steps=args.steps)
                cam_rate = cam_rate or result.train_images_per_s
                rows.append(
                    {
                        "backbone": backbone,
                        "method": wsol.upper() if da == "none" else f"{wsol.upper()} + DA-WSOL-{da.upper()}",
                        "cell": cell,
                        "image_size": settings.data.image_size,
                        "batch_size": settings.train.batch_size,
                        "train_images_per_s": round(result.train_images_per_s, 3),
                        "eval_images_per_s": round(result.eval_images_per_s, 3),
                        "train_cost_vs_cam": round(cam_rate / result.train_images_per_s, 3),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "bf16": args.bf16,
        "channels_last": args.channels_last,
        "results": rows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
