"""Team services: an MLflow tracking server on loopback receiving a real cell's run, and a DVC
push / pull round trip through a local-directory remote."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from data_fixtures import digest_tree
from train_fixtures import PROJECT_ROOT, prepare_tiny_data, write_project
from workflow_fixtures import copy_project, run_tool

BIN = Path(sys.executable).parent
CELL = "synthetic/resnet18/cam-none/seed0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """``mlflow server`` on 127.0.0.1 with its own sqlite store and proxied artifact store."""
    port = free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = (server_dir / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{server_dir / 'server.db'}",
            "--artifacts-destination",
            str(server_dir / "artifacts"),
        ],
        cwd=server_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (server_dir / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url, server_dir
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.mark.slow
def test_mlflow_server_receives_a_cells_run(tmp_path: Path, mlflow_server) -> None:
    url, server_dir = mlflow_server
    data = prepare_tiny_data(tmp_path / "data_src")
    project = write_project(tmp_path / "project", data)
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for command in ("train", "evaluate"):
        result = subprocess.run(
            [sys.executable, "-m", "dawsol", command, CELL], cwd=project, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert not (project / "mlflow.db").exists()  # nothing went to a local store

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("dawsol")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`dawsol.cell` = '{CELL}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "3"
    history = client.get_metric_history(run.info.run_id, "train.loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert "test.final.MaxBoxAccV2" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "train_log.jsonl" in artifacts
    # the artifact went through the server into its own artifact store
    assert list((server_dir / "artifacts").rglob("train_log.jsonl"))


@pytest.mark.slow
def test_dvc_push_pull_round_trip_through_a_local_remote(tmp_path: Path) -> None:
    project = copy_project(PROJECT_ROOT, tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synthetic"].update(train_per_class=3, val_per_class=1, test_per_class=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=dawsol", "-c", "user.email=dawsol@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    run_tool(["dawsol", "dvc-yaml"], project)
    run_tool(["dvc", "repro", "prepare_synthetic"], project)
    prepared = digest_tree(project / "data/synthetic")
    assert len(prepared) > 10

    remote = tmp_path / "remote"
    run_tool(["dvc", "remote", "add", "--default", "team", str(remote)], project)
    run_tool(["dvc", "push"], project)
    assert any(p.is_file() for p in remote.rglob("*"))

    # a teammate's fresh clone: no cache, no data; pull restores both byte for byte
    shutil.rmtree(project / "data/synthetic")
    shutil.rmtree(project / ".dvc/cache")
    run_tool(["dvc", "pull", "prepare_synthetic"], project)
    assert digest_tree(project / "data/synthetic") == prepared
    status = run_tool(["dvc", "status", "prepare_synthetic"], project).stdout
    assert "changed" not in status
