"""DistributedDataParallel on CPU (gloo, 2 processes under torchrun): the same anchors and metrics
as one process on the same data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import assigner_batches, one_step
from train_fixtures import PROJECT_ROOT, prepare_tiny_data, write_project

from dawsol import distributed
from dawsol.da.tsa import TargetSampleAssigner

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
WORKER = str(Path(__file__).with_name("ddp_worker.py"))


def torchrun(args: list[str], cwd: Path, timeout: float = 600) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    result = subprocess.run([*TORCHRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def test_shards_are_contiguous_and_cover_everything():
    items = list(range(7))
    shards = [distributed.shard(items, distributed.Dist(rank, 3)) for rank in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]
    assert distributed.shard(items) == items  # one process: everything
    assert distributed.global_rows(5) == (5, 0)


@pytest.mark.slow
def test_assigner_anchors_identical_on_every_rank_and_equal_to_one_process(tmp_path):
    torchrun([WORKER, "assigner", str(tmp_path)], tmp_path)
    rank0 = torch.load(tmp_path / "assigner_rank0.pt")
    rank1 = torch.load(tmp_path / "assigner_rank1.pt")
    for key in rank0:  # the all-reduced update is applied identically: bit for bit
        assert torch.equal(rank0[key], rank1[key]), key
    single = TargetSampleAssigner(3, 8, max_iter=50)
    for features, pooled, labels in assigner_batches():
        single(features, pooled, labels, update=True)
    reference = single.state_dict()
    assert int(reference["universum_count"]) == 18 and int(reference["class_counts"].sum()) > 18
    for key in reference:  # the sums add in another order: equal up to float rounding
        assert torch.allclose(rank0[key].double(), reference[key].double(), rtol=1e-5, atol=1e-6), key


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.mark.slow
def test_sharded_evaluation_merges_to_exactly_one_process_metrics(tmp_path, tiny_data):
    from dawsol.config import load_params, resolve
    from dawsol.evaluation.scoring import score_split
    from dawsol.runtime import seed_everything
    from dawsol.training.parts import build_components

    project = write_project(tmp_path / "project", tiny_data)
    cell = "synthetic/resnet18/cam-none/seed0"
    torchrun([WORKER, "evaluate", str(tmp_path), str(project), cell], tmp_path)
    sharded = json.loads((tmp_path / "evaluate.json").read_text())
    previous = Path.cwd()
    os.chdir(project)
    try:
        settings = resolve(cell, load_params("params.yaml"))
        seed_everything(0, torch.device("cpu"))
        model, _, _ = build_components(settings, torch.device("cpu"))
        single = score_split(model, settings, "test", torch.device("cpu")).metrics
    finally:
        os.chdir(previous)
    assert sharded["num_images"] == single["num_images"] == 9
    assert sharded == json.loads(json.dumps(single, sort_keys=True))


@pytest.mark.slow
def test_a_ddp_step_averages_gradients_like_one_process_on_the_whole_batch(tmp_path):
    torchrun([WORKER, "step", str(tmp_path)], tmp_path)
    one_step(tmp_path / "single.pt")
    two, one = torch.load(tmp_path / "step.pt"), torch.load(tmp_path / "single.pt")
    for key, value in one["before"].items():  # the same seeded start on every process
        assert torch.equal(two["before"][key], value), key
    moved = [k for k, v in one["after"].items() if not torch.equal(v, one["before"][k])]
    assert len(moved) > 10
    for key, value in one["after"].items():  # the averaged half-batch gradients: the whole batch's step
        assert torch.allclose(two["after"][key], value, rtol=1e-5, atol=1e-7), key


DDP_CELL = "synthetic/vgg16/cam-mmd/seed0"
# VGG16 has no BatchNorm (SyncBatchNorm needs a GPU) and a learning rate too small to move a
# float32 weight keeps every forward pass bitwise equal between 1 and 2 processes, so the
# assigner sees the same features: its anchors and the metrics must then agree. (The gradient
# averaging itself is checked by the test above; with a real rate, rounding differences
# between a 6-image and two 3-image passes flip k-means ties and the runs drift apart.)
DDP_OVERRIDES = {
    "synthetic": {"train_per_class": 4},
    "datasets": {
        "synthetic": {
            "data": {"image_size": 64, "resize_size": 72},
            "train": {"epochs": 2, "batch_size": 6, "eval_every": 1, "lr": 1e-12},
            "da": {"start_epoch": 0, "sample_num_source": 4, "sample_num_target": 4},
        }
    },
}


@pytest.mark.slow
def test_torchrun_training_equals_one_process(tmp_path):
    from train_fixtures import tiny_params

    from dawsol.config import deep_merge
    from dawsol.data.synthetic import SyntheticConfig, prepare_synthetic

    data = tmp_path / "data_src"
    prepare_synthetic(SyntheticConfig.from_params(deep_merge(tiny_params(), DDP_OVERRIDES)["synthetic"]), data)
    single = write_project(tmp_path / "single", data, **DDP_OVERRIDES)
    multi = write_project(tmp_path / "multi", data, **DDP_OVERRIDES)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dawsol", "train", DDP_CELL, "--no-tracking"],
        cwd=single,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    torchrun(["-m", "dawsol", "train", DDP_CELL, "--no-tracking"], multi)

    one = torch.load(single / "runs" / DDP_CELL / "checkpoint.pt", weights_only=True)
    two = torch.load(multi / "runs" / DDP_CELL / "checkpoint.pt", weights_only=True)
    assert two["epoch"] == one["epoch"] == 2
    assert int(one["da"]["assigner.universum_count"]) == 12  # one DA epoch of 12 images
    for key, value in one["da"].items():
        assert torch.allclose(two["da"][key].double(), value.double(), rtol=1e-5, atol=1e-7), key
    log_one = [json.loads(line) for line in (single / "runs" / DDP_CELL / "train_log.jsonl").read_text().splitlines()]
    log_two = [json.loads(line) for line in (multi / "runs" / DDP_CELL / "train_log.jsonl").read_text().splitlines()]
    assert log_one[1]["loss_d"] != 0.0
    for a, b in zip(log_one, log_two, strict=True):
        assert b["train_acc"] == a["train_acc"]
        for term in ("loss", "loss_c", "loss_d", "loss_u"):
            assert b[term] == pytest.approx(a[term], rel=1e-5, abs=1e-7), term
        assert b["val"] == a["val"]  # sharded validation merges to exactly the same metrics


def test_one_process_never_relaunches_and_small_last_batches_are_whole(monkeypatch):
    from dawsol.training.sampling import EpochBatches

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if not torch.cuda.is_available():
        assert distributed.launch_command(4, ["train", "x"]) is None  # no GPUs: one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launch_command(4, ["train", "x"]) is None  # already under torchrun
    batches = EpochBatches(size=10, batch_size=4, seed=0)
    batches.epoch = 1
    keys = [key for batch in batches for key in batch]  # one process: every image once
    assert sorted(index for index, _ in keys) == list(range(10)) and len(batches) == 3
    batches.start_batch = 2
    assert [len(b) for b in batches] == [2]  # resuming mid-epoch skips the done batches
    other = EpochBatches(size=10, batch_size=4, seed=0)
    other.epoch = 2
    assert [k for b in other for k in b] != keys  # the order and seeds are per epoch


@pytest.mark.slow
def test_the_launcher_passes_sigterm_on_and_returns_the_exit_code(tmp_path):
    import signal
    import time

    ready = tmp_path / "ready"
    child = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    command = [sys.executable, "-c", child]
    launcher = f"import sys; from dawsol.distributed import run_launcher; sys.exit(run_launcher({command!r}))"
    process = subprocess.Popen([sys.executable, "-c", launcher], env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # the launcher, not the child, is signalled, as Slurm's job step is
    assert process.wait(timeout=30) == 143
