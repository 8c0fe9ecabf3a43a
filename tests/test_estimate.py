"""dawsol estimate: workload per cell from metadata or the official sizes, measured throughput, totals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from train_fixtures import PROJECT_ROOT, prepare_tiny_data, tiny_params, write_project

from dawsol.config import load_params, resolve
from dawsol.errors import DawsolError
from dawsol.pipeline.estimate import KNOWN_SPLIT_SIZES, benchmark, benchmark_key, estimate, split_sizes, workload


def test_workload_counts_train_epochs_and_every_validation_pass():
    settings = resolve("cub/resnet50/cam-mmd/seed4", load_params(PROJECT_ROOT / "params.yaml", "paper"))
    sizes = KNOWN_SPLIT_SIZES["cub"]
    train_images, eval_images = workload(settings, sizes)
    assert settings.train.epochs == 50 and settings.train.eval_every == 5
    assert train_images == 5994 * 50
    # 10 validation passes during training (epochs 5, 10, ..., 50), then evaluate's val + test.
    assert eval_images == 1000 * 10 + 1000 + 5794


def test_ilsvrc_validates_every_epoch():
    settings = resolve("ilsvrc/resnet50/cam-none/seed4", load_params(PROJECT_ROOT / "params.yaml", "paper"))
    train_images, eval_images = workload(settings, KNOWN_SPLIT_SIZES["ilsvrc"])
    assert train_images == 1281167 * 10
    assert eval_images == 10000 * 10 + 10000 + 50000


def test_split_sizes_prefer_the_prepared_metadata(tmp_path, monkeypatch):
    data = prepare_tiny_data(tmp_path / "data_src")
    project = write_project(tmp_path / "project", data)
    monkeypatch.chdir(project)
    settings = resolve("synthetic/resnet18/cam-none/seed0", load_params("params.yaml"))
    assert split_sizes(settings) == ({"train": 36, "val": 6, "test": 9}, "metadata")
    monkeypatch.chdir(tmp_path)  # no data/synthetic here, and synthetic has no official sizes
    with pytest.raises(DawsolError, match="dawsol prepare synthetic"):
        split_sizes(settings)


def test_benchmark_runs_real_training_steps_with_the_da_terms():
    params = tiny_params()
    settings = resolve("synthetic/resnet18/cam-mmd/seed0", params)
    throughput = benchmark(settings, torch.device("cpu"), steps=2)
    assert throughput.train_images_per_s > 0 and throughput.eval_images_per_s > 0


@pytest.mark.slow
def test_estimate_benchmarks_each_configuration_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing prepared: official split sizes
    params = load_params(PROJECT_ROOT / "params.yaml", "paper")
    params = yaml.safe_load(yaml.safe_dump(params))
    for pair in ("cub/resnet50",):
        params["pairs"][pair]["model"]["pretrained"] = "none"
    # shrink the measured configuration to keep the test fast: tiny images, batch 2, resnet18-size work
    params["datasets"]["cub"]["data"].update({"image_size": 32})
    params["datasets"]["cub"]["train"].update({"batch_size": 2})
    params["datasets"]["cub"]["da"] = {"sample_num_source": 2, "sample_num_target": 2}
    calls = []
    cells = ["cub/resnet50/cam-none/seed4", "cub/resnet50/cam-none/seed5", "cub/resnet50/cam-mmd/seed4"]
    rows = estimate(
        params, "params.yaml", torch.device("cpu"), steps=1, cells=cells, on_benchmark=lambda s, t: calls.append(s)
    )
    assert len(calls) == 2  # the two seeds of cam-none share one benchmark
    assert [r.cell for r in rows] == cells
    assert rows[0].throughput == rows[1].throughput
    for row in rows:
        assert row.sizes_from == "known" and row.train_images == 5994 * 50
        expected = (
            row.train_images / row.throughput.train_images_per_s + row.eval_images / row.throughput.eval_images_per_s
        ) / 3600
        assert row.device_hours == pytest.approx(expected)
    assert benchmark_key(resolve(cells[0], params)) != benchmark_key(resolve(cells[2], params))


@pytest.mark.slow
def test_estimate_command_prints_json_with_totals(tmp_path):
    data = prepare_tiny_data(tmp_path / "data_src")
    project = write_project(tmp_path / "project", data)
    env = {"PYTHONPATH": str(PROJECT_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "dawsol", "estimate", "-q", "--json", "--steps", "1", "--device", "cpu"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["device"] == "cpu"
    cells = [row["cell"] for row in report["cells"]]
    assert len(cells) == 9 and cells[0] == "synthetic/efficientnet_lite0/cam-none/seed0"
    assert report["total"]["train_images"] == sum(row["train_images"] for row in report["cells"]) == 9 * 36 * 3
    assert report["total"]["device_hours"] == pytest.approx(sum(row["device_hours"] for row in report["cells"]))
    table = subprocess.run(
        [sys.executable, "-m", "dawsol", "estimate", "-q", "--device", "cpu", "--steps", "0"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert table.returncode == 1 and "--steps 0" in table.stderr


def test_benchmark_leaves_the_process_determinism_as_it_found_it():
    settings = resolve("synthetic/resnet18/cam-mmd/seed0", tiny_params())
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        benchmark(settings, torch.device("cpu"), steps=1, warmup=0)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(was)


def test_the_released_profile_counts_evaluation_images_only():
    from dawsol.config import grid_imports

    params = load_params(PROJECT_ROOT / "params.yaml", "released")
    imported = grid_imports(params, PROJECT_ROOT / "params.yaml")
    assert len(imported) == 6 and all(str(path).startswith("checkpoints/released/") for path in imported.values())
    settings = resolve("cub/resnet50/cam-mmd/seed0", params)
    assert settings.cell in imported
    assert workload(settings, KNOWN_SPLIT_SIZES["cub"], imported=True) == (0, 1000 + 5794)
