"""Benchmark: seconds per image of every extractor (dawsol's and pytorch-grad-cam's) relative to CAM.

Each extractor of ``dawsol.components.extractors.EXTRACTORS`` (or ``--methods``) maps the same random batch
with the same model and turns the maps into the protocol's score maps (``score_maps``), as ``dawsol
evaluate`` pays for them, interleaved batch by batch, on the CPU and on CUDA when present: median
wall seconds per image, process-CPU seconds per image (steadier on a shared machine) and the ratio
to CAM in the same run, plus CUDA's peak memory. ScoreCAM and AblationCAM run a forward pass per
target-layer channel, ``--channel-batch-size`` at a time (docs/posthoc.md section 8).

Usage (from the project root), the default benchmark's model:
``python benchmarks/bench_cam_family.py --backbone efficientnet_lite0 --pretrained imagenet --size 96``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import extractor_timing as bench  # noqa: E402

from dawsol.components.extractors import EXTRACTORS  # noqa: E402
from dawsol.evaluation import posthoc  # noqa: E402
from dawsol.evaluation.posthoc import Extractor  # noqa: E402


def bench_device(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Median seconds per image of every method, interleaved on one model and batch on ``device``."""
    model, images, labels = bench.model_and_batch(args, device)
    methods = ["cam", *[m for m in args.methods if m != "cam"]]

    def score(name: str, extract: Extractor) -> None:
        maps = extract(model, images, labels, args.layer)
        posthoc.score_maps(name, maps, (args.size, args.size), args.size)

    calls = {m: partial(score, m, posthoc.extractor(m, channel_batch_size=args.channel_batch_size)) for m in methods}
    timings = bench.time_interleaved(calls, device, warmup=args.warmup, steps=args.steps)
    cam_s = timings["cam"].wall_s
    results = {
        name: {
            "s_per_image": round(timing.wall_s / args.batch, 5),
            "cpu_s_per_image": round(timing.cpu_s / args.batch, 5),
            "relative_to_cam": round(timing.wall_s / cam_s, 2),
            **timing.peak_field(),
        }
        for name, timing in timings.items()
    }
    return {
        "device": str(device),
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "image_size": args.size,
        "batch_size": args.batch,
        "channel_batch_size": args.channel_batch_size,
        "target_layer": bench.target_layer_record(model, images, labels, args.layer),
        "steps": args.steps,
        "methods": results,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_model_arguments(parser, batch=4, classes=8)
    parser.add_argument("--methods", nargs="+", default=list(EXTRACTORS), choices=list(EXTRACTORS))
    parser.add_argument("--channel-batch-size", type=int, default=32, help="ScoreCAM / AblationCAM forwards per batch")
    bench.add_timing_arguments(parser, steps=3, warmup=1, per="method")
    args = parser.parse_args(argv)

    result = bench.report(args, bench_device)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
