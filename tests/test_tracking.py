"""MLflow tracking against real sqlite stores in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dawsol import tracking
from dawsol.config import load_params, resolve
from dawsol.errors import DawsolError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return uri


def settings_of(cell: str):
    return resolve(cell, load_params(PROJECT_ROOT / "params.yaml"), PROJECT_ROOT / "params.yaml")


def test_default_uri_is_sqlite_in_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"
    assert tracking.sqlite_path("sqlite:///mlflow.db") == Path("mlflow.db")
    assert tracking.sqlite_path("http://127.0.0.1:5000") is None


def test_init_store_is_idempotent_and_keeps_artifacts_beside_the_db(store: str, tmp_path: Path) -> None:
    client, first = tracking.init_store()
    _, second = tracking.init_store()
    assert first == second
    experiment = client.get_experiment(first)
    assert experiment.name == "dawsol"
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_init_store_in_missing_folder_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    with pytest.raises(DawsolError, match="does not exist"):
        tracking.init_store()


def test_cell_run_params_tags_metrics_artifacts_and_resume(store: str, tmp_path: Path) -> None:
    settings = settings_of("synthetic/resnet18/cam-mmd/seed1")
    run = tracking.CellRun.start(settings)
    run.log_metrics({"loss": 1.5, "lr": 0.01}, step=1, prefix="train.")
    run.log_metrics(
        {"MaxBoxAccV2": 50.0, "BoxAcc": {"50": 60.0}, "PxAP": None, "GT-known Loc": 70.0}, step=2, prefix="val."
    )
    artifact = tmp_path / "metrics.json"
    artifact.write_text("{}")
    run.log_artifact(artifact)
    run.finish()

    resumed = tracking.CellRun.start(settings, run.run_id)
    assert resumed.run_id == run.run_id
    assert tracking.CellRun.find(settings).run_id == run.run_id

    data = run.client.get_run(run.run_id)
    assert data.info.run_name == settings.cell.name
    assert data.info.status == "RUNNING"
    tags = data.data.tags
    assert tags[tracking.CELL_TAG] == settings.cell.name
    assert (tags["dataset"], tags["backbone"], tags["wsol"], tags["da"], tags["seed"]) == (
        "synthetic",
        "resnet18",
        "cam",
        "mmd",
        "1",
    )
    assert tags["settings_digest"] == settings.digest()
    assert tags["git_commit"]
    assert data.data.params["train.lr"] == str(settings.train.lr)
    assert data.data.params["da.lambda1"] == str(settings.da.lambda1)
    assert set(settings.flat()) <= set(data.data.params)
    assert data.data.metrics == {
        "train.loss": 1.5,
        "train.lr": 0.01,
        "val.MaxBoxAccV2": 50.0,
        "val.BoxAcc.50": 60.0,
        "val.GT-known_Loc": 70.0,
    }
    history = run.client.get_metric_history(run.run_id, "val.MaxBoxAccV2")
    assert [m.step for m in history] == [2]
    assert [a.path for a in run.client.list_artifacts(run.run_id)] == ["metrics.json"]
    assert (tmp_path / "mlartifacts").is_dir()


def test_find_creates_a_run_when_the_cell_has_none(store: str) -> None:
    settings = settings_of("synthetic/resnet18/cam-none/seed2")
    run = tracking.CellRun.find(settings)
    assert run.client.get_run(run.run_id).data.tags[tracking.CELL_TAG] == settings.cell.name
    assert tracking.CellRun.find(settings).run_id == run.run_id


def test_with_retry_retries_only_while_locked() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.with_retry(flaky) == "ok"
    assert len(calls) == 3

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("no such table")

    calls.clear()
    with pytest.raises(RuntimeError, match="no such table"):
        tracking.with_retry(broken)
    assert len(calls) == 1


def test_two_cells_log_to_one_fresh_store_in_parallel(store: str, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from dawsol import tracking
        from dawsol.config import load_params, resolve
        params = Path(sys.argv[2])
        settings = resolve(sys.argv[1], load_params(params), params)
        run = tracking.CellRun.start(settings)
        artifact = Path(sys.argv[3])
        artifact.write_text(sys.argv[1])
        for step in range(1, 41):
            run.log_metrics({"loss": 1.0 / step, "acc": float(step)}, step=step, prefix="train.")
        run.log_artifact(artifact)
        run.finish()
        print(run.run_id)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    cells = ["synthetic/resnet18/cam-mmd/seed0", "synthetic/resnet18/cam-dann/seed0"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, cell, str(PROJECT_ROOT / "params.yaml"), str(tmp_path / f"a{i}.txt")],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, cell in enumerate(cells)
    ]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    client, experiment_id = tracking.init_store()
    runs = client.search_runs([experiment_id])
    assert sorted(r.data.tags[tracking.CELL_TAG] for r in runs) == sorted(cells)
    for run in runs:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "train.acc")
        assert sorted(m.step for m in history) == list(range(1, 41))
        assert len(client.list_artifacts(run.info.run_id)) == 1


def test_metric_items_flattens_and_skips_non_numbers() -> None:
    metrics = {"a b": 1, "nested": {"x": 2.5, "s": "text"}, "none": None, "flag": True, "nan": float("nan"), "l": [1]}
    assert dict(tracking.metric_items(metrics, "p.")) == {"p.a_b": 1.0, "p.nested.x": 2.5}


def test_ui_listens_on_loopback_by_default(store: str) -> None:
    command = tracking.serve_command()
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--backend-store-uri") + 1] == store
    assert 1 <= int(command[command.index("--workers") + 1]) <= max(1, (os.cpu_count() or 1) // 2)


@pytest.mark.parametrize("port", ["busy", "70000"])
def test_ui_on_a_busy_or_invalid_port_is_a_one_line_error(
    store: str, port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from dawsol import cli

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        number = str(holder.getsockname()[1]) if port == "busy" else port
        assert cli.main(["tracking", "ui", "--port", number, "--params", str(PROJECT_ROOT / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (f"127.0.0.1:{number}" in err and "pick another --port" in err) or "1..65535" in err


def test_tracking_init_command(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dawsol import cli

    assert cli.main(["tracking", "init", "--params", str(PROJECT_ROOT / "params.yaml")]) == 0
    assert "experiment 'dawsol'" in capsys.readouterr().out
    assert (tmp_path / "mlflow.db").is_file()


def test_counts_and_thresholds_are_not_logged_as_metrics() -> None:
    split = {
        "num_images": 200,
        "cam_curve_interval": 0.001,
        "MaxBoxAccV2": 30.0,
        "best_threshold": {"50": 0.2},
        "chosen_threshold": {"GT-known Loc": 0.3},
        "pIoU_threshold": 0.4,
        "BoxAcc": {"50": 31.0},
    }
    assert dict(tracking.metric_items(split, "test.final.")) == {
        "test.final.MaxBoxAccV2": 30.0,
        "test.final.BoxAcc.50": 31.0,
    }
