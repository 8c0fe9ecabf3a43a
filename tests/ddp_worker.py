"""Run under ``torchrun --nproc_per_node 2`` (gloo) by tests/test_distributed.py.

``ddp_worker.py assigner OUT``: each rank updates a TargetSampleAssigner with its contiguous half
of the same global batches and writes its anchors to ``OUT/assigner_rank<r>.pt``.
``ddp_worker.py step OUT``: one DDP training step of a seeded VGG16 CAM on its half of a random
global batch; rank 0 writes the weights before and after to ``OUT/step.pt``.
``ddp_worker.py evaluate OUT PROJECT CELL``: each rank scores its slice of the test split with the
same seeded model; rank 0 writes the merged metrics to ``OUT/evaluate.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from dawsol import distributed


def assigner_batches(steps: int = 3, batch: int = 6, pixels: int = 16, dim: int = 8, classes: int = 3):
    """Seeded global batches: pixel features, image features and labels (a class repeats in a batch)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        features = torch.rand(batch, pixels, dim, generator=generator)
        pooled = features.mean(1) + 0.1 * torch.rand(batch, dim, generator=generator)
        labels = torch.randint(0, classes, (batch,), generator=generator)
        yield features, pooled, labels


def run_assigner(out: Path) -> None:
    from dawsol.da.tsa import TargetSampleAssigner

    ctx = distributed.current()
    assigner = TargetSampleAssigner(3, 8, max_iter=50)
    for features, pooled, labels in assigner_batches():
        start, stop = distributed.shard_bounds(len(labels), ctx)
        assigner(features[start:stop], pooled[start:stop], labels[start:stop], update=True)
    torch.save(assigner.state_dict(), out / f"assigner_rank{ctx.rank}.pt")


def one_step(out_path: Path) -> None:
    """One training step of ``STEP_CELL`` on this process's share of ``STEP_BATCH`` random images."""
    from train_fixtures import tiny_params

    from dawsol.config import resolve
    from dawsol.pipeline.estimate import RandomImages
    from dawsol.runtime import seed_everything
    from dawsol.training.parts import build_parts
    from dawsol.training.step import train_step

    settings = resolve("synthetic/vgg16/cam-none/seed0", tiny_params())
    data = RandomImages(6, 32, 3, seed=1)
    seed_everything(settings.seed, torch.device("cpu"))
    parts = build_parts(settings, torch.device("cpu"), dataset=data)
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    start, stop = distributed.shard_bounds(len(data))
    train_step(parts, data.images[start:stop], data.labels[start:stop], epoch=0, iteration=0)
    if distributed.current().is_main:
        torch.save({"before": before, "after": parts.model.state_dict()}, out_path)


def run_evaluate(out: Path, project: Path, cell: str) -> None:
    from dawsol.config import load_params, resolve
    from dawsol.evaluation.scoring import score_split
    from dawsol.runtime import seed_everything
    from dawsol.training.parts import build_components

    os.chdir(project)
    settings = resolve(cell, load_params("params.yaml"))
    seed_everything(0, torch.device("cpu"))
    model, _, _ = build_components(settings, torch.device("cpu"))
    metrics = score_split(model, settings, "test", torch.device("cpu")).metrics
    if distributed.current().is_main:
        (out / "evaluate.json").write_text(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    ctx, _ = distributed.init(torch.device("cpu"))
    assert ctx.world_size == 2, ctx
    target = Path(sys.argv[2])
    if sys.argv[1] == "assigner":
        run_assigner(target)
    elif sys.argv[1] == "step":
        one_step(target / "step.pt")
    else:
        run_evaluate(target, Path(sys.argv[3]), sys.argv[4])
    distributed.shutdown()
