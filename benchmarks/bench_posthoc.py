"""Benchmark: images/s of each post-hoc extractor (docs/posthoc.md) against CAM, on one model and batch.

Every dawsol extractor (``dawsol.components.extractors.OWN_EXTRACTORS``; pytorch-grad-cam's:
bench_cam_family.py) maps the same random batch with the same model, interleaved step by step, on the CPU and on
CUDA when present: median wall seconds, process-CPU seconds (steadier on a shared machine), images/s and the
slowdown against CAM in the same run, plus CUDA's peak memory per extractor.
The maps alone are timed, not the score maps (``score_maps``), whose cost is the protocol's.

Usage (from the project root):
``python benchmarks/bench_posthoc.py --backbone efficientnet_lite0 --pretrained imagenet --size 96``
or ``--backbone resnet18 --width 0.125 --size 64``. Prints one JSON object.
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

from dawsol.atomic import atomic_write_text  # noqa: E402
from dawsol.components.extractors import OWN_EXTRACTORS  # noqa: E402
from dawsol.evaluation import posthoc  # noqa: E402


def bench_device(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Median seconds per batch of every extractor, interleaved on one model and batch on ``device``."""
    model, images, labels = bench.model_and_batch(args, device)
    calls = {name: partial(posthoc.extractor(name), model, images, labels, args.layer) for name in OWN_EXTRACTORS}
    timings = bench.time_interleaved(calls, device, warmup=args.warmup, steps=args.steps)
    cam_s = timings["cam"].wall_s
    extractors = {
        name: {
            "median_s": round(timing.wall_s, 5),
            "cpu_s": round(timing.cpu_s, 5),
            "images_per_s": round(args.batch / timing.wall_s, 1),
            "slowdown_vs_cam": round(timing.wall_s / cam_s, 3),
            **timing.peak_field(),
        }
        for name, timing in timings.items()
    }
    with torch.no_grad():
        features = list(model(images[:1]).features.shape[1:])
    return {
        "device": str(device),
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "width": args.width,
        "large_feature_map": args.large_feature_map,
        "image_size": args.size,
        "batch_size": args.batch,
        "target_layer": bench.target_layer_record(model, images, labels, args.layer),
        "feature_map": features,
        "steps": args.steps,
        "extractors": extractors,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_model_arguments(parser, batch=8, classes=200)
    bench.add_timing_arguments(parser, steps=10, warmup=2, per="extractor")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    result = bench.report(args, bench_device)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        atomic_write_text(args.output, text + "\n")
    return result


if __name__ == "__main__":
    main()
