"""A real `dawsol train` / `evaluate` into MLflow on sqlite: what a user sees, a copied project, a killed trainer."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from train_fixtures import prepare_tiny_data, start, write_project

CELL = "synthetic/resnet18/cam-mmd/seed0"
TRACKING = {"defaults": {"tracking": {"log_checkpoint": True, "system_metrics_interval": 0.5}}}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")


def client_of(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def dawsol(project: Path, *args: str) -> None:
    """``python -m dawsol ARGS`` in ``project``, logging to its own store (a process of its own, as a user runs it)."""
    proc = start(project, *args)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err


def runs_of(project: Path) -> list:
    client = client_of(project)
    return client.search_runs([client.get_experiment_by_name("dawsol").experiment_id])


def test_a_trained_and_evaluated_cell_as_the_mlflow_ui_shows_it(tmp_path: Path, tiny_data: Path) -> None:
    project = write_project(tmp_path / "original", tiny_data, **TRACKING)
    dawsol(project, "train", CELL)
    dawsol(project, "evaluate", CELL)
    (run,) = runs_of(project)
    client = client_of(project)
    assert run.info.status == "FINISHED" and run.info.run_name == "cam-mmd/seed0 · synthetic/resnet18"
    tags = run.data.tags
    assert tags["dawsol.cell"] == CELL and tags["mlflow.source.name"] == "dawsol train"
    assert tags["mlflow.user"] and tags["mlflow.source.git.commit"] == tags["git_commit"]
    inputs = {(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs}
    assert inputs == {("synthetic/train", "training"), ("synthetic/val", "validation"), ("synthetic/test", "test")}
    (output,) = run.outputs.model_outputs  # tracking.log_checkpoint: the checkpoint is the run's model
    assert output.step == 3
    assert [a.path for a in client.list_logged_model_artifacts(output.model_id)] == ["checkpoint.pt"]
    metrics = run.data.metrics
    assert "system/cpu_utilization_percentage" in metrics  # the System metrics tab
    assert not [k for k in metrics if "threshold" in k or "num_images" in k or "interval" in k]
    assert {"train.loss", "val.MaxBoxAccV2", "test.final.MaxBoxAccV2", "test.final.PxAP"} <= set(metrics)

    # a copy of the project (mlflow.db and mlartifacts/ with it) logs into its own artifacts, not the original's
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, symlinks=True)
    before = {p: p.stat().st_mtime_ns for p in (project / "mlartifacts").rglob("*") if p.is_file()}
    dawsol(copy, "evaluate", CELL)
    (copied,) = runs_of(copy)
    assert copied.info.artifact_uri == f"{(copy / 'mlartifacts').as_uri()}/{run.info.run_id}/artifacts"
    evaluation = copy / "mlartifacts" / run.info.run_id / "artifacts" / "evaluation" / "metrics.json"
    assert evaluation.stat().st_mtime_ns > before[project / evaluation.relative_to(copy)]
    after = {p: p.stat().st_mtime_ns for p in (project / "mlartifacts").rglob("*") if p.is_file()}
    assert after == before  # nothing written into the original's artifacts


def test_a_trainer_killed_before_its_first_checkpoint_leaves_no_running_run(tmp_path: Path, tiny_data: Path) -> None:
    slow_epoch = {"datasets": {"synthetic": {"train": {"batch_size": 2}}}}
    project = write_project(tmp_path / "killed", tiny_data, **slow_epoch)
    proc = start(project, "train", CELL)
    deadline = time.monotonic() + 240
    while True:  # until the trainer has created its MLflow run
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the trainer never created its run"
        try:
            with sqlite3.connect(project / "mlflow.db", timeout=5) as db:
                if db.execute("SELECT count(*) FROM inputs").fetchone()[0] >= 2:
                    break
        except sqlite3.OperationalError:  # the store is still being created
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (project / "runs" / CELL / "checkpoint.pt").exists()
    (left,) = runs_of(project)
    assert left.info.status == "RUNNING"  # what a SIGKILL leaves

    dawsol(project, "train", CELL)
    (run,) = runs_of(project)  # the empty run was taken over, not left beside a new one
    assert run.info.run_id == left.info.run_id and run.info.status == "FINISHED"
    history = client_of(project).get_metric_history(run.info.run_id, "train.loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
