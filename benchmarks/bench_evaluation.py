"""Benchmark: the library's WSOL box evaluation against the straightforward baseline, and workers.

1. Single process, interval 0.001, on the same 224 x 224 score maps: ``dawsol.protocol``'s
   BoxAccumulator (one contour search per distinct binary mask, none for masks with a single
   contour) against ``reference_evaluation.ReferenceBoxAccumulator`` (one search per CAM
   threshold). Checks that every count and every metric is identical. Target: speedup >= 5.
2. ``dawsol metrics``' evaluator (``evaluate_split``) over the same CAMs saved as files, with
   1 and 2 worker processes: identical metrics, and the scaling.

The CAMs are realistic smooth ones (a 14 x 14 or 28 x 28 feature map with one to three bumps and
mild noise, bicubic-upsampled as the protocol does) plus some noisy ones (a smooth CAM with
strong full-resolution noise: thousands of contours per threshold).

Usage (from the project root): ``python benchmarks/bench_evaluation.py [--output bench.json]``.
Prints one JSON object. CPU seconds (process time) are reported beside wall seconds because the
machine may be shared; the speedups use CPU seconds in part 1 and wall seconds in part 2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from reference_evaluation import ReferenceBoxAccumulator  # noqa: E402

from dawsol.atomic import atomic_write_text  # noqa: E402
from dawsol.data.metadata import SplitMetadata, write_split  # noqa: E402
from dawsol.protocol import BoxAccumulator, metrics_dict, prepare_scoremap  # noqa: E402
from dawsol.protocol.evaluator import evaluate_split  # noqa: E402

SIZE = 224
INTERVAL = 0.001
IOU_THRESHOLDS = (30, 50, 70)


def make_cam(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A raw CAM (before resizing) and a GT box around its main bump, in 224 x 224 pixels."""
    side = 28 if kind == "smooth28" else 14
    yy, xx = np.mgrid[0:side, 0:side]
    cam = np.zeros((side, side))
    box = None
    for k in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(2, side - 2, 2)
        sigma = rng.uniform(1, side / 4)
        cam += rng.uniform(0.5, 1.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        if k == 0:
            scale = SIZE / side
            box = tuple(
                int(np.clip(v * scale, 0, SIZE - 1))
                for v in (cx - 2 * sigma, cy - 2 * sigma, cx + 2 * sigma, cy + 2 * sigma)
            )
    cam += 0.05 * rng.standard_normal((side, side)) - 0.2  # CAMs are a channel mean: no ReLU
    if kind == "noisy":
        cam = prepare_scoremap(cam, SIZE) + 0.3 * rng.random((SIZE, SIZE))
    return cam, [box]


def bench_single_process(cams: list[np.ndarray], boxes: list[np.ndarray], kinds: list[str]) -> dict[str, Any]:
    """Per kind of CAM: seconds of the library and of the baseline, and whether they agree exactly."""
    scoremaps = [prepare_scoremap(cam, SIZE) for cam in cams]
    result: dict[str, Any] = {"per_kind": {}}
    totals = {"library": [0.0, 0.0], "baseline": [0.0, 0.0]}
    identical = True
    accumulators = {}
    for name, cls in (("library", BoxAccumulator), ("baseline", ReferenceBoxAccumulator)):
        accumulators[name] = cls(IOU_THRESHOLDS, INTERVAL)
    for kind in sorted(set(kinds)):
        entry: dict[str, Any] = {"num_images": kinds.count(kind)}
        per_kind = {}
        for name, cls in (("library", BoxAccumulator), ("baseline", ReferenceBoxAccumulator)):
            acc = cls(IOU_THRESHOLDS, INTERVAL)
            wall, cpu = time.perf_counter(), time.process_time()
            for scoremap, gt, k in zip(scoremaps, boxes, kinds, strict=True):
                if k == kind:
                    acc.accumulate(scoremap, gt)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            accumulators[name].merge(acc)
            per_kind[name] = acc
            entry[f"{name}_cpu_s"] = round(cpu, 4)
            entry[f"{name}_wall_s"] = round(wall, 4)
            totals[name][0] += cpu
            totals[name][1] += wall
        same = bool(
            np.array_equal(per_kind["library"].num_correct, per_kind["baseline"].num_correct)
            and np.array_equal(per_kind["library"].num_correct_largest, per_kind["baseline"].num_correct_largest)
            and metrics_dict(per_kind["library"], None) == metrics_dict(per_kind["baseline"], None)
        )
        identical &= same
        entry["identical"] = same
        entry["speedup_cpu"] = round(entry["baseline_cpu_s"] / entry["library_cpu_s"], 2)
        entry["library_ms_per_image"] = round(1000 * entry["library_cpu_s"] / entry["num_images"], 2)
        entry["baseline_ms_per_image"] = round(1000 * entry["baseline_cpu_s"] / entry["num_images"], 2)
        result["per_kind"][kind] = entry
    library = metrics_dict(accumulators["library"], None)
    identical &= library == metrics_dict(accumulators["baseline"], None)
    result.update(
        {
            "library_cpu_s": round(totals["library"][0], 4),
            "baseline_cpu_s": round(totals["baseline"][0], 4),
            "library_wall_s": round(totals["library"][1], 4),
            "baseline_wall_s": round(totals["baseline"][1], 4),
            "speedup_cpu": round(totals["baseline"][0] / totals["library"][0], 2),
            "speedup_wall": round(totals["baseline"][1] / totals["library"][1], 2),
            "identical": identical,
            "metrics": library,
        }
    )
    return result


def bench_workers(split: Path, cam_dir: Path, expected: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Wall seconds of evaluate_split with 1 and 2 workers (best of ``repeats``) and exact agreement."""
    seconds: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, float] = {1: 0.0, 2: 0.0}
    identical = True
    for _ in range(repeats):
        for workers in (1, 2):
            start, before = time.perf_counter(), _cpu_seconds()
            box, _ = evaluate_split(split, cam_dir, cam_curve_interval=INTERVAL, size=SIZE, workers=workers)
            seconds[workers].append(time.perf_counter() - start)
            cpu[workers] += (_cpu_seconds() - before) / repeats
            identical &= metrics_dict(box, None) == expected
    best = {w: min(s) for w, s in seconds.items()}
    return {
        "workers_1_wall_s": round(best[1], 4),
        "workers_2_wall_s": round(best[2], 4),
        "scaling_2_workers": round(best[1] / best[2], 2),
        "workers_1_cpu_s": round(cpu[1], 4),
        "workers_2_cpu_s": round(cpu[2], 4),
        "identical": identical,
    }


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished worker processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smooth", type=int, default=32, help="smooth CAMs (half 14 x 14, half 28 x 28)")
    parser.add_argument("--noisy", type=int, default=4, help="noisy CAMs")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each worker count (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    kinds = ["smooth14"] * (args.smooth // 2) + ["smooth28"] * (args.smooth - args.smooth // 2) + ["noisy"] * args.noisy
    cams, boxes = [], []
    for kind in kinds:
        cam, box = make_cam(rng, kind)
        cams.append(cam)
        boxes.append(np.asarray(box, dtype=np.int64))
    report: dict[str, Any] = {
        "benchmark": "evaluation",
        "size": SIZE,
        "cam_curve_interval": INTERVAL,
        "num_images": len(kinds),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }
    report["single_process"] = bench_single_process(cams, boxes, kinds)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = [f"img/{k:04d}.png" for k in range(len(kinds))]
        meta = SplitMetadata(
            image_ids=ids,
            labels=dict.fromkeys(ids, 0),
            sizes={i: (SIZE, SIZE) for i in ids},
            boxes={i: [tuple(b) for b in box.tolist()] for i, box in zip(ids, boxes, strict=True)},
        )
        split = root / "metadata" / "test"
        split.mkdir(parents=True)
        write_split(split, meta)
        for image_id, cam in zip(ids, cams, strict=True):
            path = root / "cams" / f"{image_id}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, cam)
        expected = report["single_process"]["metrics"]
        report["workers"] = bench_workers(split, root / "cams", expected, args.repeats)
    report["identical"] = report["single_process"]["identical"] and report["workers"]["identical"]
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        atomic_write_text(args.output, text + "\n")
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
