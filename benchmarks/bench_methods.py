"""Benchmark: the cost of DA-WSOL over CAM, and the batched assigner against per-image scikit-learn.

1. Training step (same run, same backbone, same batch): training's own step
   (``dawsol.training.step.train_step`` on the parts ``dawsol.training.parts.build_parts`` builds for the
   cell, as ``dawsol estimate`` times it) in an epoch before the DA terms switch on (a CAM step: forward,
   L_c, backward, SGD) against one after (the same plus the assigner, sampling, L_d and L_u), on the CPU
   and on CUDA when present, under training's determinism settings, median wall and process-CPU
   seconds of interleaved steps. Target: ``da_step_s / cam_step_s <= 1.2``.
   The batch is real images of the cell's prepared train split when it is prepared (so as many
   images qualify for L_d as in training), random pixels otherwise (``step[].images`` says which).
2. Assigner: ``dawsol.da.tsa.kmeans3`` on B images of pixel features at once, against the
   official way, ``sklearn.cluster.k_means`` per image on host copies from the same init, on three
   kinds of features (``assigner[].features``): ``synthetic`` (side x side x D post-ReLU clusters),
   ``model`` (the cell's backbone on its real train images, its own map size and D) and ``slow``
   (features spread along a segment, seeded at one end, where Lloyd needs many iterations;
   ``sklearn_mean_iterations`` says how many). Target on the CPU: ``sklearn_s / kmeans3_s >= 3``.

Usage (from the project root): ``python benchmarks/bench_methods.py [--output bench.json]``.
Prints one JSON object; ``--cell`` picks the settings (backbone, input size, batch, sampling).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dawsol.atomic import atomic_write_text  # noqa: E402
from dawsol.config import Settings, resolve  # noqa: E402
from dawsol.da import kmeans3  # noqa: E402
from dawsol.data.datasets import EvalDataset, collate_eval  # noqa: E402
from dawsol.errors import DawsolError  # noqa: E402
from dawsol.models import build_model  # noqa: E402
from dawsol.models.registry import normalization  # noqa: E402
from dawsol.runtime import deterministic, synchronize  # noqa: E402
from dawsol.training.parts import build_parts  # noqa: E402
from dawsol.training.step import train_step  # noqa: E402


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call."""
    return _timed_both(fn, device)[0]


def _timed_both(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all threads) of one call.

    On a CPU shared with other jobs the wall time swings with their load; the CPU time is the
    steadier measure of the work itself.
    """
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def bench_step(params: Path, cell: str, device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    """Median seconds of training's step before and after ``da.start_epoch``, interleaved on one model and batch."""
    settings = resolve(cell, source=params)
    if settings.da is None:
        raise SystemExit(f"{cell}: pick a DA cell (e.g. synthetic/resnet18/cam-mmd/seed0)")
    size, batch = settings.data.image_size, settings.train.batch_size
    real = real_batch(settings, batch)
    if real is None:
        images = torch.randn(batch, 3, size, size)
        labels = torch.randint(0, settings.data.num_classes, (batch,))
    else:
        images, labels = real
    torch.manual_seed(0)
    qualified: list[int] = []
    with deterministic(device):
        parts = build_parts(settings, device, dataset=TensorDataset(images, labels))
        assert parts.da_loss is not None  # a DA cell
        parts.da_loss.register_forward_hook(lambda module, inputs, result: qualified.append(result.num_qualified))
        parts.model.train()
        iteration = parts.objective.total_iterations // 2  # DANN's progress 0.5, mid-run
        cam_epoch, da_epoch = settings.da.first_epoch - 1, settings.da.first_epoch  # DA terms off, on
        da_losses: list[dict[str, float]] = []

        def cam_step() -> None:
            train_step(parts, images, labels, cam_epoch, iteration)

        def da_step() -> None:
            da_losses.append(train_step(parts, images, labels, da_epoch, iteration)[1])

        cam_times, da_times = [], []
        for index in range(warmup + steps):
            cam, da = _timed_both(cam_step, device), _timed_both(da_step, device)
            if index >= warmup:
                cam_times.append(cam)
                da_times.append(da)
        with torch.no_grad():
            feature_shape = list(parts.model(images[:1].to(device)).features.shape[1:])
    cam_s, da_s = (statistics.median(t[0] for t in times) for times in (cam_times, da_times))
    cam_cpu, da_cpu = (statistics.median(t[1] for t in times) for times in (cam_times, da_times))
    return {
        "device": str(device),
        "cell": cell,
        "step": "dawsol.training.step.train_step",
        "backbone": settings.model.backbone,
        "width": settings.model.width,
        "image_size": size,
        "batch_size": batch,
        "images": "random" if real is None else f"{settings.dataset_dir}/train",
        "frozen_stages": settings.model.frozen_stages,
        "feature_map": feature_shape,
        "sample_num": [settings.da.sample_num_source, settings.da.sample_num_target],
        "epochs_timed": {"cam": cam_epoch, "da": da_epoch},
        "steps": steps,
        "cam_step_s": round(cam_s, 5),
        "da_step_s": round(da_s, 5),
        "ratio": round(da_s / cam_s, 3),
        "cam_step_cpu_s": round(cam_cpu, 5),
        "da_step_cpu_s": round(da_cpu, 5),
        "cpu_time_ratio": round(da_cpu / cam_cpu, 3),
        "target_ratio": 1.2,
        "pass": da_s / cam_s <= 1.2,
        "mean_qualified_images": round(statistics.mean(qualified[warmup:]), 2),
        "mean_loss_d": round(statistics.mean(losses["loss_d"] for losses in da_losses[warmup:]), 5),
        "mean_loss_u": round(statistics.mean(losses["loss_u"] for losses in da_losses[warmup:]), 5),
    }


def real_batch(settings: Settings, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``batch`` train images of the cell's prepared dataset (eval transform), labels; None if unprepared."""
    try:
        dataset = EvalDataset(
            settings.dataset_dir,
            "train",
            settings.data.image_size,
            normalization=normalization(settings.model.backbone),
        )
    except DawsolError:  # not prepared: random pixels instead
        return None
    step = max(1, len(dataset) // batch)  # spread over the classes
    items = collate_eval([dataset[i * step] for i in range(min(batch, len(dataset)))])
    return items["image"], items["label"]


def model_features(params: Path, cell: str, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cell's backbone features of real train images as [B, N, D], with an assigner-like init
    (universum anchor 0, the image mean, the most active pixel); None if the dataset is not prepared."""
    settings = resolve(cell, source=params)
    real = real_batch(settings, batch)
    if real is None:
        return None
    torch.manual_seed(0)
    model = build_model(settings.model, settings.data.num_classes, settings.wsol).eval()
    with torch.no_grad():
        x = model(real[0]).features.flatten(2).transpose(1, 2).contiguous()  # [B, N, D]
    peak = x[torch.arange(x.shape[0]), x.norm(dim=2).argmax(dim=1)]
    init = torch.stack([torch.zeros_like(peak), x.mean(1), peak], dim=1)
    return x, init


def slow_features(batch: int, side: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-ReLU features spread evenly along a segment between two prototypes (no clusters), seeded at
    three nearby points at one end: Lloyd's centres creep along the segment for many iterations."""
    gen = torch.Generator().manual_seed(seed)
    start, end = torch.randn(2, dim, generator=gen).relu()
    position = torch.rand(batch, side * side, 1, generator=gen)
    x = (position * end + (1 - position) * start + 0.05 * torch.randn(batch, side * side, dim, generator=gen)).relu()
    init = torch.stack([start, 0.95 * start + 0.05 * end, 0.9 * start + 0.1 * end]).expand(batch, 3, dim)
    return x, init.contiguous()


def synthetic_features(batch: int, side: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-ReLU pixel features with a background, an object and a discriminative part, and the
    assigner's initial centres ``[M_0, z, M_y]`` for them."""
    gen = torch.Generator().manual_seed(seed)
    pixels = side * side
    prototypes = torch.randn(3, dim, generator=gen).relu() * torch.tensor([0.2, 1.0, 2.0])[:, None]
    part = torch.randint(0, 3, (batch, pixels), generator=gen)
    part = torch.where(torch.rand(batch, pixels, generator=gen) < 0.5, 0, part)  # half background
    x = (prototypes[part] + 0.5 * torch.randn(batch, pixels, dim, generator=gen)).relu()
    # seeds off the clusters' centres, so Lloyd needs a few iterations (as real features: 2-3)
    universum_anchor = torch.zeros(batch, dim)
    class_anchor = (0.5 * prototypes[1] + 0.5 * prototypes[2]).expand(batch, dim)
    init = torch.stack([universum_anchor, x.mean(1), class_anchor], dim=1)
    return x, init


def bench_assigner(
    kind: str, features: tuple[torch.Tensor, torch.Tensor], repeats: int, max_iter: int
) -> dict[str, Any]:
    """kmeans3 on the whole batch (CPU, and CUDA when present) against per-image sklearn k_means."""
    from sklearn.cluster import k_means

    # the model's layout: [B, D, h, w] features seen as [B, N, D]
    x = features[0].transpose(1, 2).contiguous().transpose(1, 2)
    init = features[1]
    batch, pixels, dim = x.shape
    iterations: list[int] = []

    def ours() -> torch.Tensor:
        return kmeans3(x, init, max_iter=max_iter)[0]

    def official() -> list:
        labels = []
        for b in range(batch):
            samples = x[b].detach().cpu().numpy()  # the official host copy, per image
            centres = init[b].detach().cpu().double().numpy()
            result = k_means(
                samples, n_clusters=3, init=centres, n_init=1, random_state=0, max_iter=max_iter, return_n_iter=True
            )
            labels.append(result[1])
            iterations.append(result[3])
        return labels

    cpu = torch.device("cpu")
    ours_labels, sklearn_labels = ours(), official()  # warm-up
    ours_s = min(_timed(ours, cpu) for _ in range(repeats))
    sklearn_s = min(_timed(official, cpu) for _ in range(repeats))
    agreement = statistics.mean(float((ours_labels[b].numpy() == sklearn_labels[b]).mean()) for b in range(batch))
    result: dict[str, Any] = {
        "features": kind,
        "images": batch,
        "pixels_x_dim": [pixels, dim],
        "max_iter": max_iter,
        "sklearn_mean_iterations": round(statistics.mean(iterations), 2),
        "kmeans3_cpu_s": round(ours_s, 4),
        "sklearn_per_image_cpu_s": round(sklearn_s, 4),
        "speedup_cpu": round(sklearn_s / ours_s, 2),
        "target_speedup": 3.0,
        "pass": sklearn_s / ours_s >= 3.0,
        "label_agreement_with_sklearn": round(agreement, 5),
    }
    if torch.cuda.is_available():
        device = torch.device("cuda")
        x_gpu, init_gpu = x.to(device), init.to(device)
        kmeans3(x_gpu, init_gpu, max_iter)
        result["kmeans3_cuda_s"] = round(
            min(_timed(lambda: kmeans3(x_gpu, init_gpu, max_iter), device) for _ in range(repeats)), 5
        )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--cell", default="synthetic/resnet18/cam-mmd/seed0", help="a DA cell: backbone, size, batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--assigner-images", type=int, default=32)
    parser.add_argument("--assigner-side", type=int, default=28)
    parser.add_argument("--assigner-dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="assigner timings: best of this many")
    parser.add_argument("--max-iter", type=int, default=50, help="kmeans3 cap (da.kmeans_max_iter)")
    parser.add_argument("--only", choices=["step", "assigner"], default=None, help="run one of the two benchmarks")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    report: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.only != "assigner":
        report["step"] = [bench_step(args.params, args.cell, device, args.steps, args.warmup) for device in devices]
    if args.only != "step":
        side, dim, images = args.assigner_side, args.assigner_dim, args.assigner_images
        cases = {
            "synthetic": synthetic_features(images, side, dim),
            "model": model_features(args.params, args.cell, images),
            "slow": slow_features(images, side, dim),
        }
        report["assigner"] = [
            bench_assigner(kind, features, args.repeats, args.max_iter)
            for kind, features in cases.items()
            if features is not None
        ]
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        atomic_write_text(args.output, text + "\n")
    return report


if __name__ == "__main__":
    main()
