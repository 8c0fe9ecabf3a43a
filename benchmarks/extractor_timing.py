"""What the post-hoc extractor benchmarks share (``bench_posthoc.py``, ``bench_cam_family.py``).

Their flags for the model and batch, the seeded model and random batch, the interleaved timing of every method
against the same model and batch (median wall and process-CPU seconds, CUDA's peak memory), the target layer's
record, and the report over the CPU and CUDA when present. Not a benchmark itself; the scripts import it (their
folder is first on ``sys.path`` when run as ``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from dawsol.components.backbones import BACKBONES
from dawsol.config import ModelSettings, WSOLSettings
from dawsol.evaluation import posthoc
from dawsol.models import build_model
from dawsol.models.model import WSOLModel
from dawsol.runtime import synchronize


class Timing(NamedTuple):
    """One method's median wall and process-CPU seconds per call, and CUDA's peak bytes (None on the CPU)."""

    wall_s: float
    cpu_s: float
    peak_bytes: int | None

    def peak_field(self) -> dict[str, float]:
        """``{"peak_mib": ...}`` where CUDA measured a peak, else empty (merged into a method's row)."""
        return {} if self.peak_bytes is None else {"peak_mib": round(self.peak_bytes / 2**20, 1)}


def add_model_arguments(parser: argparse.ArgumentParser, *, batch: int, classes: int) -> None:
    """The flags of the model, the batch and the target layer."""
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--pretrained", default="none", help="none or imagenet (efficientnet_lite0's is offline)")
    parser.add_argument(
        "--width", type=float, default=None, help="backbones with a width multiplier (default 0.125; 1.0 elsewhere)"
    )
    parser.add_argument("--size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--classes", type=int, default=classes)
    parser.add_argument("--large-feature-map", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--layer", default=None, help="target layer (default: the backbone's, docs/posthoc.md)")


def add_timing_arguments(parser: argparse.ArgumentParser, *, steps: int, warmup: int, per: str) -> None:
    """The flags of the timed and warm-up batches (``per``: what one timed batch is per) and torch's threads."""
    parser.add_argument("--steps", type=int, default=steps, help=f"timed batches per {per}")
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")


def model_and_batch(args: argparse.Namespace, device: torch.device) -> tuple[WSOLModel, torch.Tensor, torch.Tensor]:
    """The CAM model of the flags in eval mode and a random batch with random labels, seeded (seed 0)."""
    torch.manual_seed(0)
    settings = ModelSettings(args.backbone, args.pretrained, args.large_feature_map, args.width)
    model = build_model(settings, args.classes, WSOLSettings("cam")).to(device).eval()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    return model, images, labels


def time_interleaved(
    calls: dict[str, Callable[[], object]], device: torch.device, *, warmup: int, steps: int
) -> dict[str, Timing]:
    """Each of ``calls`` once per step, in turn, synchronized around each call; the first ``warmup`` steps untimed."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    peaks: dict[str, int] = {}
    for step in range(warmup + steps):
        for name, call in calls.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            synchronize(device)
            if step >= warmup:
                times[name].append((time.perf_counter() - start, time.process_time() - start_cpu))
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device))
    return {
        name: Timing(
            statistics.median(t[0] for t in samples), statistics.median(t[1] for t in samples), peaks.get(name)
        )
        for name, samples in times.items()
    }


def target_layer_record(
    model: WSOLModel, images: torch.Tensor, labels: torch.Tensor, layer: str | None
) -> dict[str, Any]:
    """The resolved target layer: its setting's name, its trunk path and its activation's shape for one image."""
    target = posthoc.target_layer(model, layer)
    activation = list(posthoc.capture(model, images[:1], labels[:1], layer).activation.shape[1:])
    return {"name": target.name, "path": target.path, "activation": activation}


def report(
    args: argparse.Namespace, bench_device: Callable[[argparse.Namespace, torch.device], dict[str, Any]]
) -> dict[str, Any]:
    """``bench_device`` on the CPU and on CUDA when present, after the flags' defaults (width) and threads."""
    if args.width is None:
        args.width = 0.125 if BACKBONES[args.backbone].width_multiplier else 1.0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "runs": [bench_device(args, device) for device in devices],
    }
