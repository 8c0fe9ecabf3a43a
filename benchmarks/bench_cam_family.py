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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dawsol.components.extractors import EXTRACTORS  # noqa: E402
from dawsol.config import ModelSettings, WSOLSettings  # noqa: E402
from dawsol.evaluation import posthoc  # noqa: E402
from dawsol.models import build_model  # noqa: E402
from dawsol.runtime import synchronize  # noqa: E402


def bench_device(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Median seconds per image of every method, interleaved on one model and batch on ``device``."""
    torch.manual_seed(0)
    settings = ModelSettings(args.backbone, args.pretrained, args.large_feature_map, args.width)
    model = build_model(settings, args.classes, WSOLSettings("cam")).to(device).eval()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    methods = ["cam", *[m for m in args.methods if m != "cam"]]
    extractors = {m: posthoc.extractor(m, channel_batch_size=args.channel_batch_size) for m in methods}
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    peaks: dict[str, int] = {}
    for step in range(args.warmup + args.steps):
        for name, extract in extractors.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            maps = extract(model, images, labels, args.layer)
            posthoc.score_maps(name, maps, (args.size, args.size), args.size)
            synchronize(device)
            if step >= args.warmup:
                times[name].append((time.perf_counter() - start, time.process_time() - start_cpu))
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device))
    cam_s = statistics.median(t[0] for t in times["cam"])
    results = {}
    for name, samples in times.items():
        wall = statistics.median(t[0] for t in samples)
        results[name] = {
            "s_per_image": round(wall / args.batch, 5),
            "cpu_s_per_image": round(statistics.median(t[1] for t in samples) / args.batch, 5),
            "relative_to_cam": round(wall / cam_s, 2),
            **({"peak_mib": round(peaks[name] / 2**20, 1)} if name in peaks else {}),
        }
    layer = posthoc.target_layer(model, args.layer)
    activation = list(posthoc.capture(model, images[:1], labels[:1], args.layer).activation.shape[1:])
    return {
        "device": str(device),
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "image_size": args.size,
        "batch_size": args.batch,
        "channel_batch_size": args.channel_batch_size,
        "target_layer": {"name": layer.name, "path": layer.path, "activation": activation},
        "steps": args.steps,
        "methods": results,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--pretrained", default="none", help="none or imagenet (efficientnet_lite0's is offline)")
    parser.add_argument("--width", type=float, default=None, help="resnet18 only (default 0.125; 1.0 elsewhere)")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--large-feature-map", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--layer", default=None, help="target layer (default: the backbone's, docs/posthoc.md)")
    parser.add_argument("--methods", nargs="+", default=list(EXTRACTORS), choices=list(EXTRACTORS))
    parser.add_argument("--channel-batch-size", type=int, default=32, help="ScoreCAM / AblationCAM forwards per batch")
    parser.add_argument("--steps", type=int, default=3, help="timed batches per method")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)

    if args.width is None:
        args.width = 0.125 if args.backbone == "resnet18" else 1.0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "runs": [bench_device(args, device) for device in devices],
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
