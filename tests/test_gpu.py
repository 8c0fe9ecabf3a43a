"""What needs a CUDA device: bf16 and channels_last training, NCCL in one process, SyncBatchNorm, a cell trained and
evaluated on the GPU. Skipped without CUDA; `python benchmarks/gpu_check.py` runs them (docs/benchmarks.md,
"On a GPU")."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fixtures import PROJECT_ROOT, dawsol_env, prepare_tiny_data, run_in, write_project

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CELL = "synthetic/resnet18/cam-mmd/seed0"
CUDA_OPTIONS = {"train": {"bf16": True, "channels_last": True, "device": "cuda"}}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")


def test_bf16_and_channels_last_apply_on_cuda(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dawsol.config import load_params, resolve
    from dawsol.training.parts import build_parts
    from dawsol.training.step import train_step

    project = write_project(tmp_path / "bf16", tiny_data, defaults=CUDA_OPTIONS)
    monkeypatch.chdir(project)
    settings = resolve(CELL, load_params("params.yaml"), "params.yaml")
    parts = build_parts(settings, torch.device("cuda"))
    assert parts.objective.bf16 and parts.channels_last
    conv = next(m for m in parts.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images, labels = next(iter(parts.batches.epoch(epoch=1, start_batch=0)))
    correct, losses = train_step(parts, images, labels, epoch=1, iteration=5)
    assert 0 <= correct <= len(labels)
    assert all(math.isfinite(value) for value in losses.values()), losses


def test_a_cell_trains_and_evaluates_on_cuda_in_bf16(tmp_path: Path, tiny_data: Path) -> None:
    project = write_project(tmp_path / "cell", tiny_data, defaults=CUDA_OPTIONS)
    for command in ("train", "evaluate"):
        assert run_in(project, command, CELL, "--no-tracking") == 0
    metrics = json.loads((project / "results" / "cells" / CELL / "metrics.json").read_text())
    for split in ("val", "test"):
        assert 0 <= metrics["splits"][split]["MaxBoxAccV2"] <= 100


ONE_PROCESS_NCCL = """
import json, socket, torch, torch.distributed as dist
from torch import nn
from dawsol import distributed
from dawsol.config import ModelSettings, WSOLSettings
from dawsol.models import build_model

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
torch.cuda.set_device(0)
dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
device = torch.device("cuda", 0)
report = {"backend": dist.get_backend(), "world": distributed.current().world_size}
report["all_reduce"] = distributed.all_reduce_sum(torch.ones(3, device=device)).tolist()
report["all_gather"] = distributed.all_gather_cat(torch.arange(4, device=device)).tolist()
torch.manual_seed(0)
model = ModelSettings(backbone="resnet18", pretrained="none", large_feature_map=False, width=1.0)
plain = build_model(model, 3, WSOLSettings(method="cam")).to(device)
synced = nn.SyncBatchNorm.convert_sync_batchnorm(build_model(model, 3, WSOLSettings(method="cam"))).to(device)
synced.load_state_dict(plain.state_dict())
report["sync_batchnorm_layers"] = sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
ddp = nn.parallel.DistributedDataParallel(synced, device_ids=[0])
images = torch.randn(4, 3, 64, 64, device=device)
out_plain, out_synced = plain(images).logits, ddp(images).logits
out_synced.sum().backward()
report["max_difference"] = (out_plain - out_synced).abs().max().item()
report["gradients_finite"] = all(torch.isfinite(p.grad).all().item() for p in synced.parameters() if p.grad is not None)
dist.destroy_process_group()
print(json.dumps(report))
"""


def test_nccl_in_one_process_and_syncbatchnorm_equal_plain_batchnorm(tmp_path: Path) -> None:
    """One NCCL process: dawsol's collectives are the identity, and a SyncBatchNorm model under DDP computes
    what the plain BatchNorm model does (its batch statistics are the one process's)."""
    proc = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS_NCCL],
        cwd=PROJECT_ROOT,
        env=dawsol_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "nccl" and report["world"] == 1
    assert report["all_reduce"] == [1.0, 1.0, 1.0] and report["all_gather"] == [0, 1, 2, 3]
    assert report["sync_batchnorm_layers"] > 10
    assert report["max_difference"] < 1e-4 and report["gradients_finite"]
