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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dawsol.components.extractors import OWN_EXTRACTORS  # noqa: E402
from dawsol.config import ModelSettings, WSOLSettings  # noqa: E402
from dawsol.evaluation import posthoc  # noqa: E402
from dawsol.models import build_model  # noqa: E402
from dawsol.runtime import synchronize  # noqa: E402


def bench_device(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Median seconds per batch of every extractor, interleaved on one model and batch on ``device``."""
    torch.manual_seed(0)
    settings = ModelSettings(args.backbone, args.pretrained, args.large_feature_map, args.width)
    model = build_model(settings, args.classes, WSOLSettings("cam")).to(device).eval()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in OWN_EXTRACTORS}
    peaks: dict[str, int] = {}
    for step in range(args.warmup + args.steps):
        for name in OWN_EXTRACTORS:
            extract = posthoc.extractor(name)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            extract(model, images, labels, args.layer)
            synchronize(device)
            if step >= args.warmup:
                times[name].append((time.perf_counter() - start, time.process_time() - start_cpu))
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device))
    cam_s = statistics.median(t[0] for t in times["cam"])
    extractors = {}
    for name, samples in times.items():
        wall = statistics.median(t[0] for t in samples)
        extractors[name] = {
            "median_s": round(wall, 5),
            "cpu_s": round(statistics.median(t[1] for t in samples), 5),
            "images_per_s": round(args.batch / wall, 1),
            "slowdown_vs_cam": round(wall / cam_s, 3),
            **({"peak_mib": round(peaks[name] / 2**20, 1)} if name in peaks else {}),
        }
    layer = posthoc.target_layer(model, args.layer)
    with torch.no_grad():
        features = list(model(images[:1]).features.shape[1:])
    activation = list(posthoc.capture(model, images[:1], labels[:1], args.layer).activation.shape[1:])
    return {
        "device": str(device),
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "width": args.width,
        "large_feature_map": args.large_feature_map,
        "image_size": args.size,
        "batch_size": args.batch,
        "target_layer": {"name": layer.name, "path": layer.path, "activation": activation},
        "feature_map": features,
        "steps": args.steps,
        "extractors": extractors,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--pretrained", default="none", help="none or imagenet (efficientnet_lite0's is offline)")
    parser.add_argument("--width", type=float, default=None, help="resnet18 only (default 0.125; 1.0 elsewhere)")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--large-feature-map", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--layer", default=None, help="target layer (default: the backbone's, docs/posthoc.md)")
    parser.add_argument("--steps", type=int, default=10, help="timed batches per extractor")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
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
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.output)
    return report


if __name__ == "__main__":
    main()
