"""MLflow tracking against real sqlite stores in tmp_path."""

from __future__ import annotations

import json
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
    assert data.info.run_name == "cam-mmd/seed1 · synthetic/resnet18"
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_run_names_put_method_and_seed_first() -> None:
    from dawsol.config import parse_cell

    assert tracking.run_name(parse_cell("synthetic/efficientnet_lite0/cam-mmd/seed0")) == (
        "cam-mmd/seed0 · synthetic/efficientnet_lite0"
    )
    assert tracking.run_name(parse_cell("cub/resnet50/has-none/seed2-trial7")) == "has-none/seed2-trial7 · cub/resnet50"


@pytest.mark.slow
def test_runs_carry_mlflows_source_user_and_commit_tags_and_the_experiment_a_description(store: str) -> None:
    from dawsol.provenance import code_version

    run = tracking.CellRun.start(settings_of("synthetic/resnet18/cam-none/seed0"))
    tags = run.client.get_run(run.run_id).data.tags
    assert tags["mlflow.source.name"] == "dawsol train" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"] not in ("", "unknown")
    assert tags.get("mlflow.source.git.commit") == code_version()["git_commit"]
    client, experiment_id = tracking.init_store()
    assert "one run per cell" in client.get_experiment(experiment_id).tags["mlflow.note.content"].lower()


def test_a_store_made_without_a_description_gets_one(store: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment_id = client.create_experiment("dawsol")
    tracking.init_store()
    assert client.get_experiment(experiment_id).tags["mlflow.note.content"] == tracking.EXPERIMENT_NOTE


def test_the_experiment_is_of_kind_model_training_on_a_new_and_on_an_older_store(store: str) -> None:
    from mlflow import MlflowClient

    client, experiment_id = tracking.init_store()
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    client = MlflowClient(tracking_uri=store)
    older = "DA-WSOL reproduction by dawsol (README, section MLflow). One run per cell, as it was."
    client.set_experiment_tag(experiment_id, "mlflow.note.content", older)
    client.delete_experiment_tag(experiment_id, "mlflow.experimentKind")
    tracking.init_store()
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == tracking.EXPERIMENT_NOTE  # an older dawsol description is refreshed
    client.set_experiment_tag(experiment_id, "mlflow.note.content", "my own notes")
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "genai_development")
    tracking.init_store()
    tags = client.get_experiment(experiment_id).tags
    assert (tags["mlflow.note.content"], tags["mlflow.experimentKind"]) == ("my own notes", "genai_development")


def test_the_ui_urls_open_the_runs_in_model_training_mode_and_the_results_view(store: str) -> None:
    from urllib.parse import parse_qs, urlsplit

    urls = tracking.browse_urls("127.0.0.1", 5123, "7")
    assert urls["runs"] == "http://127.0.0.1:5123/#/experiments/7/runs?workflowType=machine_learning"
    route = urlsplit(urlsplit(urls["results"]).fragment)
    assert route.path == "/experiments/7/runs"
    assert parse_qs(route.query) == {"workflowType": ["machine_learning"], "viewStateShareKey": ["dawsol-results"]}
    assert "table" not in urls
    table = tracking.browse_urls("127.0.0.1", 5123, "7", ("abc", "tables/synthetic.json"))["table"]
    assert (
        table
        == "http://127.0.0.1:5123/#/experiments/7/runs/abc/artifacts/tables/synthetic.json?workflowType=machine_learning"
    )
    assert tracking.browse_urls("0.0.0.0", 80, "1")["runs"].startswith("http://127.0.0.1:80/")
    assert tracking.browse_urls("::1", 80, "1")["runs"].startswith("http://[::1]:80/")


def test_the_ui_server_runs_with_mlflow_telemetry_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    assert tracking.serve_environment()["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    assert tracking.serve_environment()["MLFLOW_DISABLE_TELEMETRY"] == "false"


def test_summary_runs_are_replaced_not_added_and_tables_rewritten_not_appended(store: str, tmp_path: Path) -> None:
    import pandas as pd

    client, experiment_id = tracking.init_store()
    parent = tracking.parent_run(client, experiment_id, "dawsol.grid", "g1", "grid x", "report")
    first = [
        tracking.Summary("a", "a/mean", {"test.X.mean": 1.0, "seeds": 3.0}, {"dataset": "d"}),
        tracking.Summary("b", "b/mean", {"test.X.mean": 2.0}),
    ]
    ids = tracking.sync_summaries(client, experiment_id, parent, first)
    again = tracking.sync_summaries(
        client, experiment_id, parent, [tracking.Summary("a", "a/mean", {"test.X.mean": 1.5, "seeds": 3.0})]
    )
    assert again == {"a": ids["a"]}
    assert tracking.summary_runs(client, experiment_id, parent) == {"a": ids["a"]}
    run = client.get_run(ids["a"])
    assert run.data.metrics == {"test.X.mean": 1.5, "seeds": 3.0} and run.info.status == "FINISHED"
    assert run.data.tags["dawsol.kind"] == "summary" and run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["mlflow.source.name"] == "dawsol report" and run.data.tags["dataset"] == "d"
    assert client.get_run(ids["b"]).info.lifecycle_stage == "deleted"
    other = tracking.parent_run(client, experiment_id, "dawsol.grid", "g2", "grid y", "report")
    assert tracking.summary_runs(client, experiment_id, other) == {}  # a summary belongs to one parent

    table = pd.DataFrame({"method": ["cam", "mmd"], "MaxBoxAccV2_mean": [60.0, 65.5]})
    for _ in range(2):
        tracking.log_table(parent, table, "tables/t.json")
    loaded = client.load_table(experiment_id, "tables/t.json", run_ids=[parent.run_id])
    assert loaded.to_dict("list") == table.to_dict("list")
    logged = json.loads(client.get_run(parent.run_id).data.tags["mlflow.loggedArtifacts"])
    assert logged == [{"path": "tables/t.json", "type": "table"}]

    assert not tracking.has_results_view(client, experiment_id)
    tracking.share_results_view(client, experiment_id, ["test.X.mean", "seeds"], "test.X.mean")
    assert tracking.has_results_view(client, experiment_id)
    view = json.loads(client.get_experiment(experiment_id).tags["mlflow.sharedViewState.dawsol-results"])
    assert view == {
        "searchFilter": tracking.SUMMARY_FILTER,
        "orderByKey": "metrics.`test.X.mean`",
        "orderByAsc": False,
        "selectedColumns": ["metrics.`test.X.mean`", "metrics.`seeds`"],
    }


@pytest.mark.slow
def test_a_trainer_taking_the_cell_reuses_an_empty_stale_run_and_ends_the_others(store: str) -> None:
    """A trainer killed before its first checkpoint left its run RUNNING; the next one holds the lock, so
    every RUNNING run of the cell is stale: an empty one with the same settings is reused, the rest end."""
    settings = settings_of("synthetic/resnet18/cam-mmd/seed0")
    empty = tracking.CellRun.start(settings)  # killed before it logged an epoch
    again = tracking.CellRun.start(settings)
    assert again.run_id == empty.run_id
    client = again.client
    again.log_metrics({"loss": 1.0}, step=1, prefix="train.")  # then killed after an epoch, its checkpoint lost
    other = settings_of("synthetic/resnet18/cam-dann/seed0")
    bystander = tracking.CellRun.start(other)  # another cell's run is left alone
    fresh = tracking.CellRun.start(settings)
    assert fresh.run_id != empty.run_id
    stale = client.get_run(empty.run_id)
    assert stale.info.status == "KILLED" and stale.data.tags[tracking.STALE_TAG] == fresh.run_id
    assert client.get_run(fresh.run_id).info.status == "RUNNING"
    assert client.get_run(bystander.run_id).info.status == "RUNNING"
    resumed = tracking.CellRun.start(settings, fresh.run_id)  # a resume keeps its own run
    assert resumed.run_id == fresh.run_id and client.get_run(fresh.run_id).info.status == "RUNNING"


@pytest.mark.slow
def test_a_copied_project_writes_artifacts_into_its_own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{original / 'mlflow.db'}")
    settings = settings_of("synthetic/resnet18/cam-none/seed0")
    run = tracking.CellRun.start(settings)
    first = tmp_path / "first.txt"
    first.write_text("first")
    run.log_artifact(first)
    model = tracking.CellRun(run.client, run.run_id).log_model(first, "model", 1)
    shutil.copytree(original, copy)

    second = tmp_path / "second.txt"
    second.write_text("second")
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from dawsol import tracking
        from dawsol.config import load_params, resolve
        params = Path(sys.argv[1])
        client, _ = tracking.init_store()
        tracking.CellRun(client, sys.argv[2]).log_artifact(sys.argv[3])  # the copied run
        settings = resolve("synthetic/resnet18/cam-mmd/seed0", load_params(params), params)
        tracking.CellRun.start(settings).log_artifact(sys.argv[3])  # a new run in the copy
        """
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{copy / 'mlflow.db'}"}
    command = [sys.executable, "-c", script, str(PROJECT_ROOT / "params.yaml"), run.run_id, str(second)]
    subprocess.run(command, env=env, cwd=copy, check=True, timeout=240)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")
    client, experiment_id = tracking.init_store()
    root = (copy / "mlartifacts").as_uri()
    assert client.get_experiment(experiment_id).artifact_location == root
    assert client.get_run(run.run_id).info.artifact_uri.startswith(root + "/")
    assert client.get_logged_model(model).artifact_location.startswith(root + "/")
    assert sorted(a.path for a in client.list_artifacts(run.run_id)) == ["first.txt", "second.txt"]
    copied = sorted(p.name for p in (copy / "mlartifacts").rglob("*.txt"))
    assert copied == ["first.txt", "first.txt", "second.txt", "second.txt"]
    assert sorted(p.name for p in (original / "mlartifacts").rglob("*.txt")) == ["first.txt", "first.txt"]


def test_a_split_is_a_dataset_input_and_a_checkpoint_a_logged_model(store: str, tmp_path: Path) -> None:
    from dataclasses import replace

    from dawsol.data.metadata import SplitMetadata, write_split

    settings = settings_of("synthetic/resnet18/cam-none/seed0")
    settings = replace(settings, data=replace(settings.data, root=str(tmp_path / "data")))
    ids = [f"train/{i}.png" for i in range(5)]
    write_split(
        tmp_path / "data" / "synthetic" / "metadata" / "train",
        SplitMetadata(ids, {i: n % 2 for n, i in enumerate(ids)}, {i: (8, 8) for i in ids}),
    )
    run = tracking.CellRun.start(settings)
    run.log_dataset(settings, "train", "training")
    run.log_dataset(settings, "train", "training")  # a resumed trainer logs it again: still one input
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"weights")
    model_id = run.log_model(checkpoint, "synthetic-resnet18-cam-none-seed0", 3)
    data = run.client.get_run(run.run_id)
    (entry,) = data.inputs.dataset_inputs
    assert entry.dataset.name == "synthetic/train" and len(entry.dataset.digest) == 16
    assert json.loads(entry.dataset.profile) == {"num_rows": 5}
    assert json.loads(entry.dataset.source)["uri"].endswith("data/synthetic/metadata/train")
    assert [(t.key, t.value) for t in entry.tags] == [("mlflow.data.context", "training")]
    assert [(o.model_id, o.step) for o in data.outputs.model_outputs] == [(model_id, 3)]
    model = run.client.get_logged_model(model_id)
    assert model.source_run_id == run.run_id and str(model.status) == "READY"
    assert [a.path for a in run.client.list_logged_model_artifacts(model_id)] == ["checkpoint.pt"]


@pytest.mark.slow
def test_system_metrics_are_sampled_while_inside_and_never_at_interval_zero(store: str) -> None:
    import time

    run = tracking.CellRun.start(settings_of("synthetic/resnet18/cam-none/seed0"))
    with run.system_metrics(0):
        time.sleep(1.2)
    assert run.client.get_run(run.run_id).data.metrics == {}
    with run.system_metrics(0.5):
        time.sleep(1.8)
    metrics = run.client.get_run(run.run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0 and "system/system_memory_usage_megabytes" in metrics
    steps = [m.step for m in run.client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")]
    with run.system_metrics(0.5):  # a resumed trainer continues the steps
        time.sleep(1.2)
    history = run.client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")
    assert min(m.step for m in history if m.step not in steps) == max(steps) + 1


@pytest.mark.slow
def test_ui_serves_the_store_with_workers_from_the_cores(store: str, tmp_path: Path) -> None:
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [sys.executable, "-m", "dawsol", "tracking", "ui", "--port", str(port)]
    command += ["--params", str(PROJECT_ROOT / "params.yaml")]
    began = time.monotonic()
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() - began < 180, "mlflow ui never answered"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        started = time.monotonic() - began
        (server,) = [p for p in _processes() if _stat(p, 1) == proc.pid]  # mlflow ui, dawsol's child
        group = _stat(server, 2)
        workers = [p for p in _processes() if _stat(p, 2) == group]
        names = [(p / "cmdline").read_bytes().replace(b"\0", b" ").decode() for p in workers]
    finally:
        proc.send_signal(signal.SIGTERM)  # dawsol alone, as a service manager or a job scheduler stops it
        proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while any(_stat(p, 2) == group for p in _processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in _processes() if _stat(p, 2) == group], "the server outlived dawsol tracking ui"
    assert tracking.ui_workers() == max(1, min(4, (os.cpu_count() or 1) // 2))
    # mlflow and uvicorn's workers (with a master when more than one), no job runners
    assert len(workers) <= 2 + tracking.ui_workers(), names
    print(f"mlflow ui answered after {started:.1f} s with {len(workers)} server processes")


def _processes() -> list[Path]:
    return [p for p in Path("/proc").iterdir() if p.name.isdigit()]


def _stat(proc_dir: Path, field: int) -> int | None:
    """Field ``field`` after the state in /proc/<pid>/stat (1: the parent pid, 2: the process group)."""
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[field])
    except (OSError, ValueError, IndexError):
        return None


def test_a_full_disk_under_the_store_is_one_named_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """sqlite's "database or disk is full" and an ENOSPC under MLflow's own exception name the store; a locked
    store is still retried and any other error passes through."""
    import errno

    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def sqlite_full() -> None:
        raise MlflowException("(sqlite3.OperationalError) database or disk is full")

    def copy_full() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "mlartifacts" / "x"))
        except OSError as exc:
            raise MlflowException("failed to log artifact") from exc

    for fn in (sqlite_full, copy_full):
        with pytest.raises(DawsolError, match=r"MLflow store sqlite:///.*mlflow\.db: its disk is full") as info:
            tracking.with_retry(fn)
        assert "--no-tracking" in str(info.value) and "\n" not in str(info.value)
    calls = []

    def locked_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("database is locked")
        return "ok"

    assert tracking.with_retry(locked_once) == "ok" and len(calls) == 2

    def other() -> None:
        raise ValueError("other")

    with pytest.raises(ValueError):
        tracking.with_retry(other)


def _project_with_a_run(project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[str, str]:
    """A project folder whose store holds one run with one artifact and one logged model; (run id, model id)."""
    project.mkdir()
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    run = tracking.CellRun.start(settings_of("synthetic/resnet18/cam-none/seed0"))
    artifact = tmp_path / "kept.txt"
    artifact.write_text("kept")
    run.log_artifact(artifact)
    model = tracking.CellRun(run.client, run.run_id).log_model(artifact, "model", 1)
    return run.run_id, model


def test_a_store_reached_through_a_symlink_rewrites_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    run_id, model = _project_with_a_run(project, monkeypatch, tmp_path)
    client, experiment_id = tracking.init_store()
    before = (client.get_experiment(experiment_id).artifact_location, client.get_run(run_id).info.artifact_uri)
    elsewhere.mkdir()
    (project / "mlflow.db").rename(elsewhere / "mlflow.db")
    (project / "mlflow.db").symlink_to(elsewhere / "mlflow.db")

    client, experiment_id = tracking.init_store()  # what `dawsol report` does first
    assert (client.get_experiment(experiment_id).artifact_location, client.get_run(run_id).info.artifact_uri) == before
    assert client.get_logged_model(model).artifact_location.startswith(before[0] + "/")
    assert [a.path for a in client.list_artifacts(run_id)] == ["kept.txt"]


def test_a_moved_project_is_re_pointed_and_a_run_not_proven_moved_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    original, moved = tmp_path / "original", tmp_path / "moved"
    run_id, model = _project_with_a_run(original, monkeypatch, tmp_path)
    client, experiment_id = tracking.init_store()
    lost = client.create_run(experiment_id)  # its artifacts will not travel with the project
    (Path(client.get_run(lost.info.run_id).info.artifact_uri.removeprefix("file://"))).mkdir(parents=True)
    lost_uri = client.get_run(lost.info.run_id).info.artifact_uri
    shutil.move(original, moved)
    shutil.rmtree(moved / "mlartifacts" / lost.info.run_id)
    (original / "mlartifacts" / lost.info.run_id).mkdir(parents=True)  # still in the old place

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{moved / 'mlflow.db'}")
    client, experiment_id = tracking.init_store()
    root = (moved / "mlartifacts").as_uri()
    assert client.get_experiment(experiment_id).artifact_location == root
    assert client.get_run(run_id).info.artifact_uri.startswith(root + "/")
    assert client.get_logged_model(model).artifact_location.startswith(root + "/")
    assert [a.path for a in client.list_artifacts(run_id)] == ["kept.txt"]
    assert client.get_run(lost.info.run_id).info.artifact_uri == lost_uri
