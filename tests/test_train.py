"""Training and evaluation of one cell on a tiny synthetic benchmark: resume, determinism, signals, bad input."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import evaluated_project, prepare_tiny_data, run_in, start, write_project

from dawsol import cli
from dawsol.checkpoints.format import load_checkpoint, restore_training, save_checkpoint
from dawsol.config import load_params, resolve
from dawsol.errors import DawsolError
from dawsol.runtime import restore_rng, select_device
from dawsol.training.cell import position_checkpoint
from dawsol.training.loop import Position
from dawsol.training.parts import build_parts
from dawsol.training.step import train_step

CELL = "synthetic/resnet18/cutmix-dann/seed0"
EPOCHS = 3


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """An uninterrupted train + evaluate of CELL, without tracking."""
    return evaluated_project(tmp_path_factory.mktemp("reference"), tiny_data, CELL)


def metrics_of(project: Path, cell: str = CELL) -> dict:
    return json.loads((project / "results" / "cells" / cell / "metrics.json").read_text())


def log_of(project: Path, cell: str = CELL) -> list[dict]:
    """train_log.jsonl without the wall-clock field."""
    lines = (project / "runs" / cell / "train_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def checkpoint_of(project: Path, cell: str = CELL) -> Path:
    return project / "runs" / cell / "checkpoint.pt"


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.slow
def test_reference_outputs_follow_the_contract(reference: Path) -> None:
    metrics = metrics_of(reference)
    assert (metrics["cell"], metrics["wsol"], metrics["da"], metrics["seed"]) == (CELL, "cutmix", "dann", 0)
    for split in ("val", "test"):
        m = metrics["splits"][split]
        assert 0 <= m["Top-1 Cls"] <= 100
        for key in ("MaxBoxAccV2", "GT-known Loc", "Top-1 Loc", "PxAP", "pIoU"):
            assert isinstance(m[key], float), key
    assert metrics["splits"]["val"]["num_images"] == 6
    assert metrics["splits"]["test"]["num_images"] == 9
    records = [json.loads(line) for line in (reference / "runs" / CELL / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["lr"] for r in records] == pytest.approx([0.01, 0.001, 0.001])
    assert records[0]["loss_d"] == 0.0 and records[0]["loss_u"] == 0.0  # DA starts after 0-based epoch 0
    assert records[1]["loss_u"] > 0.0
    assert all(r["val"] is not None for r in records)
    assert set(records[0]) >= {"epoch", "lr", "loss", "loss_c", "loss_d", "loss_u", "train_acc", "images_per_s", "val"}
    cells_dir = reference / "results" / "cells" / CELL
    header = (cells_dir / "curves.csv").read_text().splitlines()[0]
    assert header == "split,threshold,BoxAcc_30,BoxAcc_50,BoxAcc_70,precision,recall,IoU"
    import numpy as np

    samples = np.load(cells_dir / "cam_samples.npz")
    assert samples["cams"].shape == (8, 32, 32) and samples["cams"].dtype == np.float16
    assert list(samples["image_ids"][:2]) == ["test/000/00000.png", "test/000/00001.png"]
    assert (cells_dir / "cams.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_and_a_finished_cell_is_left_alone(
    tmp_path: Path, tiny_data: Path, reference: Path, caplog: pytest.LogCaptureFixture
) -> None:
    project = write_project(tmp_path / "again", tiny_data)
    for command in ("train", "evaluate"):
        assert run_in(project, command, CELL, "--no-tracking") == 0
    assert metrics_of(project) == metrics_of(reference)
    assert log_of(project) == log_of(reference)

    checkpoint = checkpoint_of(project)
    before = checkpoint.stat().st_mtime_ns
    caplog.set_level(logging.INFO)
    assert run_in(project, "train", CELL, "--no-tracking") == 0
    assert "already trained" in caplog.text
    assert checkpoint.stat().st_mtime_ns == before


@pytest.mark.slow
@pytest.mark.parametrize("workflow_cleanup", [False, True], ids=["rerun", "rerun-after-snakemake-cleanup"])
def test_sigkill_then_rerun_ends_with_the_uninterrupted_metrics(
    tmp_path: Path, tiny_data: Path, reference: Path, caplog: pytest.LogCaptureFixture, workflow_cleanup: bool
) -> None:
    project = write_project(tmp_path / "killed", tiny_data)
    proc = start(project, "train", CELL, "--no-tracking")
    wait_for(checkpoint_of(project), proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(checkpoint_of(project))["epoch"] < EPOCHS, "killed too late to test resuming"
    if workflow_cleanup:  # Snakemake and DVC delete a job's declared outputs before re-running it
        checkpoint_of(project).unlink()
        (checkpoint_of(project).parent / "train_log.jsonl").unlink(missing_ok=True)
    caplog.set_level(logging.INFO)
    assert run_in(project, "train", CELL, "--no-tracking") == 0
    assert "resuming from" in caplog.text
    assert run_in(project, "evaluate", CELL, "--no-tracking") == 0
    assert metrics_of(project) == metrics_of(reference)
    assert log_of(project) == log_of(reference)


@pytest.mark.slow
def test_a_second_trainer_of_a_running_cell_is_refused_naming_the_first(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = write_project(tmp_path / "locked", tiny_data)
    proc = start(project, "train", CELL, "--no-tracking")
    owner = project / "runs" / CELL / ".train.owner"
    wait_for(owner, proc)
    try:
        assert run_in(project, "train", CELL, "--no-tracking") == 1
        error = capsys.readouterr().err.strip()
        assert f"process {proc.pid}" in error and ".train.lock" in error and "\n" not in error
    finally:
        proc.send_signal(signal.SIGKILL)  # a killed trainer releases the lock with its process
        proc.communicate(timeout=60)
    leftover = project / "runs" / CELL / ".checkpoint.pt.abc123.tmp"  # what a save killed mid-write leaves
    leftover.write_bytes(b"partial")
    assert run_in(project, "train", CELL, "--no-tracking") == 0
    assert not owner.exists() and not leftover.exists()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_continues_the_mlflow_run(
    tmp_path: Path,
    tiny_data: Path,
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    project = write_project(tmp_path / "preempted", tiny_data)
    proc = start(project, "train", CELL)
    wait_for(checkpoint_of(project), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "re-run the same command to resume" in err
    saved = load_checkpoint(checkpoint_of(project))
    assert saved["batch"] > 0 and saved["epoch"] < EPOCHS  # a mid-epoch checkpoint

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    caplog.set_level(logging.INFO)
    assert run_in(project, "train", CELL) == 0
    assert "resuming from" in caplog.text
    assert run_in(project, "evaluate", CELL) == 0
    assert metrics_of(project) == metrics_of(reference)
    assert log_of(project) == log_of(reference)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dawsol")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "cutmix-dann/seed0 · synthetic/resnet18" and run.info.status == "FINISHED"
    assert run.data.tags["dawsol.cell"] == CELL
    assert run.info.run_id == saved["mlflow_run_id"]
    assert run.data.params["train.epochs"] == str(EPOCHS)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train.loss")]
    assert sorted(steps) == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val.MaxBoxAccV2")] == [1, 2, 3]
    final = metrics_of(project)["splits"]["test"]["MaxBoxAccV2"]
    assert run.data.metrics["test.final.MaxBoxAccV2"] == pytest.approx(final)
    # the post-hoc maps of eval.cam_methods (the synthetic datasets' [cam, bagcams]) are metrics of their own
    bagcams = metrics_of(project)["extractors"]["bagcams"]["splits"]["test"]["PxAP"]
    assert run.data.metrics["bagcams.test.final.PxAP"] == pytest.approx(bagcams)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"settings.yaml", "train_log.jsonl", "assigner.png", "evaluation"} <= artifacts
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    names = ("metrics.json", "headline.json", "curves.csv", "curves_posthoc.csv", "cams.png", "cam_samples.npz")
    assert evaluation == {f"evaluation/{n}" for n in names}


def test_checkpoint_round_trip_with_dann(reference: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(reference)
    state = load_checkpoint(Path("runs") / CELL / "checkpoint.pt")
    assert state["epoch"] == EPOCHS and state["batch"] == 0
    assert {"discriminator.linear.weight", "discriminator.linear.bias"} <= set(state["da"])
    assert any("assigner" in key for key in state["da"])
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert groups["discriminator"]["decay"] is False
    assert groups["discriminator"]["lr"] == groups["discriminator"]["base_lr"] == pytest.approx(0.1)
    assert groups["classifier"]["lr"] == pytest.approx(0.01)  # 10 x lr, decayed once at epoch 2
    assert set(state["rng"]) >= {"python", "numpy", "torch", "loader", "augment"}

    settings = resolve(CELL, load_params("params.yaml"), "params.yaml")
    parts = build_parts(settings, torch.device("cpu"))
    restore_training(state, parts.model, parts.optimizer, parts.da_loss)
    restore_rng(state["rng"], parts.generators)
    again = position_checkpoint(parts, Position.from_checkpoint(state), state["mlflow_run_id"])
    for part in ("model", "da"):
        assert again[part].keys() == state[part].keys()
        for key, value in state[part].items():
            assert torch.equal(again[part][key], value), key
    assert again["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    for index, buffers in state["optimizer"]["state"].items():
        assert torch.equal(again["optimizer"]["state"][index]["momentum_buffer"], buffers["momentum_buffer"])
    assert again["records"] == state["records"]


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_a_checkpoint_that_runs_code_is_refused(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = write_project(tmp_path / "evil", tiny_data)
    target = checkpoint_of(project)
    target.parent.mkdir(parents=True)
    torch.save({"format": 1, "payload": _Exploit()}, target)
    monkeypatch.chdir(project)
    with pytest.raises(DawsolError, match="refused"):
        load_checkpoint(Path("runs") / CELL / "checkpoint.pt")
    assert cli.main(["train", CELL, "--no-tracking"]) == 1
    assert cli.main(["localize", "--checkpoint", str(target), str(tiny_data / "test/000/00000.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("refused") == 2 and "Traceback" not in err
    assert not (project / "pwned").exists()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main([*args, "--no-tracking"])
    return code, capsys.readouterr().err


def test_bad_input_is_a_one_line_error_without_outputs(
    tmp_path: Path,
    tiny_data: Path,
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bare = write_project(tmp_path / "bare", None)
    monkeypatch.chdir(bare)
    for command in ("train", "evaluate"):
        code, err = run_cli(capsys, command, "synthetic/nonet/cam-none/seed0")
        assert code == 1 and "unknown backbone 'nonet'" in err and len(err.strip().splitlines()) == 1
        code, err = run_cli(capsys, command, "not-a-cell")
        assert code == 1 and "malformed cell" in err
        code, err = run_cli(capsys, command, CELL)
        assert code == 1 and "run: dawsol prepare synthetic" in err and len(err.strip().splitlines()) == 1

    project = write_project(tmp_path / "other", tiny_data)
    monkeypatch.chdir(project)
    code, err = run_cli(capsys, "evaluate", CELL)
    assert code == 1 and f"run: dawsol train {CELL}" in err

    other = "synthetic/resnet50/cutmix-dann/seed0"
    (project / "runs" / other).mkdir(parents=True)
    shutil.copy(checkpoint_of(reference), checkpoint_of(project, other))
    for command in ("train", "evaluate"):
        code, err = run_cli(capsys, command, other)
        assert code == 1 and "for backbone 'resnet18'" in err and len(err.strip().splitlines()) == 1
    assert not (project / "results" / "cells" / other).exists()

    (project / "runs" / CELL).mkdir(parents=True)
    shutil.copy(checkpoint_of(reference), checkpoint_of(project))
    changed = write_project(tmp_path / "changed", tiny_data, datasets={"synthetic": {"train": {"lr": 0.02}}})
    shutil.copytree(project / "runs", changed / "runs")
    monkeypatch.chdir(changed)
    code, err = run_cli(capsys, "train", CELL)
    assert code == 1 and "other settings" in err

    monkeypatch.chdir(project)
    unfinished = load_checkpoint(checkpoint_of(project))
    unfinished["epoch"] = 1
    torch.save(unfinished, checkpoint_of(project))
    code, err = run_cli(capsys, "evaluate", CELL)
    assert code == 1 and "training stopped at epoch 1 of 3" in err
    assert not (project / "results" / "cells" / CELL / "metrics.json").exists()


def test_two_stage_predictions_and_localize(
    tmp_path: Path,
    tiny_data: Path,
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = write_project(tmp_path / "twostage", tiny_data)
    shutil.copytree(reference / "runs", project / "runs")
    monkeypatch.chdir(project)
    from dawsol.data.metadata import read_split

    rows = ["image_id,prediction"]
    for split in ("val", "test"):
        meta = read_split(tiny_data / "metadata" / split)
        rows += [f"{i},{meta.labels[i]}" for i in meta.image_ids]
    (project / "oracle.csv").write_text("\n".join(rows) + "\n")
    code, err = run_cli(capsys, "evaluate", CELL, "--predictions", "oracle.csv")
    assert code == 0, err
    metrics = metrics_of(project)
    for split in ("val", "test"):
        m = metrics["splits"][split]
        assert m["Top-1 Cls (two-stage)"] == 100.0
        assert m["Top-1 Loc (two-stage)"] == pytest.approx(m["GT-known Loc"])  # an oracle classifier
        plain = metrics_of(reference)["splits"][split]
        assert {k: v for k, v in m.items() if "two-stage" not in k} == plain

    (project / "partial.csv").write_text("test/000/00000.png,0\n")
    code, err = run_cli(capsys, "evaluate", CELL, "--predictions", "partial.csv")
    assert code == 1 and "no prediction for image" in err

    code = cli.main(
        [
            "localize",
            "--checkpoint",
            str(checkpoint_of(project)),
            str(tiny_data / "test/001/00000.png"),
            "--out",
            "mine",
        ]
    )
    assert code == 0
    import cv2

    drawn = cv2.imread(str(project / "mine" / "00000_cam.png"))
    assert drawn is not None and drawn.shape[0] >= 4 * 32  # drawn at the image's size, scaled up

    (project / "notes.txt").write_text("not an image")
    good = str(tiny_data / "test/002/00000.png")
    args = ["localize", "--checkpoint", str(checkpoint_of(project)), good, "notes.txt", "--out", "partial"]
    assert cli.main(args) == 1
    assert "notes.txt: not a readable image" in capsys.readouterr().err
    assert not (project / "partial").exists() or not any((project / "partial").iterdir())  # nothing half-written


def test_device_selection() -> None:
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        mps = getattr(torch.backends, "mps", None)
        expected = "mps" if mps is not None and mps.is_available() else "cpu"
        assert select_device("auto").type == expected
        with pytest.raises(DawsolError, match="not available"):
            select_device("cuda")
    else:
        assert select_device("auto").type == "cuda"


def test_cuda_only_options_are_ignored_on_cpu(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = write_project(tmp_path / "bf16", tiny_data, defaults={"train": {"bf16": True, "channels_last": True}})
    monkeypatch.chdir(project)
    settings = resolve(CELL, load_params("params.yaml"), "params.yaml")
    parts = build_parts(settings, torch.device("cpu"))
    assert not parts.objective.bf16 and not parts.channels_last
    images, labels = next(iter(parts.batches.epoch(epoch=1, start_batch=0)))
    correct, losses = train_step(parts, images, labels, epoch=1, iteration=5)
    assert 0 <= correct <= len(labels)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


@pytest.mark.slow
def test_a_stale_resume_link_is_discarded(tmp_path: Path, tiny_data: Path, reference: Path) -> None:
    """A resume link left by a run of other settings (e.g. before a params change) never resumes."""
    from dawsol.config import tree_digest

    project = write_project(tmp_path / "stale", tiny_data)
    run_dir = checkpoint_of(project).parent
    run_dir.mkdir(parents=True)
    stale = load_checkpoint(checkpoint_of(reference))
    stale["settings"]["train"]["lr"] *= 2  # trained with another learning rate
    stale.update(settings_digest=tree_digest(stale["settings"]), epoch=1)
    torch.save(stale, run_dir / ".resume.pt")
    assert run_in(project, "train", CELL, "--no-tracking") == 0
    assert run_in(project, "evaluate", CELL, "--no-tracking") == 0
    assert metrics_of(project) == metrics_of(reference)
    assert (run_dir / ".resume.pt").samefile(checkpoint_of(project))


def test_the_resume_link_is_written_before_the_checkpoint_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between the two names must never leave checkpoint.pt without a matching .resume.pt."""
    checkpoint, resume = tmp_path / "checkpoint.pt", tmp_path / ".resume.pt"

    replace = os.replace

    def killed_before_the_checkpoint_rename(src: Path, dst: Path) -> None:
        if Path(dst) == checkpoint:
            raise KeyboardInterrupt  # the process dies where checkpoint.pt would appear
        replace(src, dst)

    monkeypatch.setattr("dawsol.atomic.os.replace", killed_before_the_checkpoint_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(checkpoint, {"epoch": 1}, resume=resume)
    assert resume.is_file() and not checkpoint.exists()
    monkeypatch.undo()
    save_checkpoint(checkpoint, {"epoch": 2}, resume=resume)
    assert resume.samefile(checkpoint)
    assert torch.load(resume, weights_only=True) == {"epoch": 2}


def test_a_da_cell_reports_where_its_assigner_puts_object_and_background(reference: Path) -> None:
    for split in ("val", "test"):
        tsa = metrics_of(reference)["splits"][split]["TSA"]
        assert set(tsa) == {"object_pixels", "background_pixels"}
        for shares in tsa.values():
            assert set(shares) == {"universum", "fake_target", "true_target"}
            assert sum(shares.values()) == pytest.approx(100.0)


def test_assigner_counts_use_the_feature_resolution_and_skip_the_ignore_band() -> None:
    from dawsol.evaluation.scoring import AssignerCounts

    mask = np.zeros((8, 8), np.uint8)
    mask[:4, :4] = 1  # feature pixel (0, 0): object
    mask[:4, 4:] = 255  # (0, 1): ignore band only, counted nowhere
    mask[4:, :4] = 1
    mask[4:6, :4] = 0  # (1, 0): half object, half background: counts as both
    assignment = np.array([[2, 1], [0, 0]])  # (1, 1): background
    counts = AssignerCounts()
    counts.add(assignment, mask)
    assert counts.object.tolist() == [1, 0, 1]
    assert counts.background.tolist() == [2, 0, 0]
    metrics = counts.metrics()
    assert metrics["object_pixels"] == {"universum": 50.0, "fake_target": 0.0, "true_target": 50.0}
    assert metrics["background_pixels"]["universum"] == 100.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_failed_re_evaluation_keeps_the_old_outputs(
    tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dawsol evaluate --device cuda` without CUDA fails before it replaces anything."""
    project = tmp_path / "again"
    shutil.copytree(reference, project)
    cell_dir = project / "results" / "cells" / CELL
    before = {path.name: path.read_bytes() for path in cell_dir.iterdir()}
    previous = Path.cwd()
    os.chdir(project)
    try:
        code, err = run_cli(capsys, "evaluate", CELL, "--device", "cuda")
    finally:
        os.chdir(previous)
    assert code == 1 and "'cuda' is not available" in err
    assert {path.name: path.read_bytes() for path in cell_dir.iterdir()} == before


def test_a_checkpoint_from_before_a_new_setting_still_resumes(reference: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint written before model.frozen_stages existed resumes: read back, its settings are today's."""
    from dawsol.checkpoints.format import check_compatible
    from dawsol.config import tree_digest

    monkeypatch.chdir(reference)
    state = load_checkpoint(checkpoint_of(reference))
    settings = resolve(CELL, load_params("params.yaml"), "params.yaml")
    del state["settings"]["model"]["frozen_stages"]
    state["settings_digest"] = tree_digest(state["settings"])
    check_compatible(state, settings, checkpoint_of(reference))  # no error
    state["settings"]["train"]["lr"] *= 2
    state["settings_digest"] = tree_digest(state["settings"])
    with pytest.raises(DawsolError, match="other settings"):
        check_compatible(state, settings, checkpoint_of(reference))


def test_an_eval_change_leaves_a_trained_cell_trained(
    reference: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Eval settings do not shape the weights: `dawsol train` after an eval change trains nothing."""
    import yaml

    params = yaml.safe_load((reference / "params.yaml").read_text())
    params["defaults"]["eval"]["cam_curve_interval"] = 0.02
    changed = reference / "params_eval.yaml"
    changed.write_text(yaml.safe_dump(params, sort_keys=False))
    before = checkpoint_of(reference).read_bytes()
    caplog.set_level(logging.INFO)
    assert run_in(reference, "train", CELL, "--params", str(changed), "--no-tracking") == 0
    assert "already trained" in caplog.text and checkpoint_of(reference).read_bytes() == before


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda path, state: path.write_bytes(b""), "an empty file, not a torch checkpoint"),  # a disk-full leftover
        (lambda path, state: torch.save({**state, "model": None}, path), "'model' is a NoneType"),
        (lambda path, state: torch.save({k: v for k, v in state.items() if k != "rng"}, path), "no 'rng'"),
        (lambda path, state: torch.save({**state, "epoch": "3"}, path), "'epoch' is a str"),
    ],
)
def test_a_damaged_checkpoint_is_one_named_line(reference: Path, tmp_path: Path, damage, expected) -> None:
    state = load_checkpoint(checkpoint_of(reference))
    path = tmp_path / "checkpoint.pt"
    damage(path, state)
    with pytest.raises(DawsolError, match=expected) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("command", "split", "label", "expected"),
    [
        ("train", "train", "99", "label 99, outside 0..2"),
        ("train", "val", "-1", "label -1 of val/000/00000.png out of range"),
        ("train", "val", None, "the val split is empty"),
        ("evaluate", "val", "-1", "label -1 of val/000/00000.png out of range"),  # evaluate reads val and test
        ("evaluate", "val", None, "the val split is empty"),
    ],
)
def test_bad_labels_and_an_empty_split_fail_before_any_work(
    tmp_path: Path,
    tiny_data: Path,
    reference: Path,
    capsys: pytest.CaptureFixture[str],
    command,
    split,
    label,
    expected,
) -> None:
    import shutil

    data = tmp_path / "data_copy"
    shutil.copytree(tiny_data, data)
    project = write_project(tmp_path / "bad", data)
    if command == "evaluate":
        shutil.copytree(reference / "runs", project / "runs")
    metadata = data / "metadata" / split
    if label is None:  # an empty split: no image in any of its files
        for path in metadata.iterdir():
            path.write_text("")
    else:
        lines = (metadata / "class_labels.txt").read_text().splitlines()
        lines[0] = lines[0].rsplit(",", 1)[0] + "," + label
        (metadata / "class_labels.txt").write_text("\n".join(lines) + "\n")
    assert run_in(project, command, CELL, "--no-tracking") == 1
    error = capsys.readouterr().err.strip()
    named = "image_ids.txt" if label is None else "class_labels.txt"  # the file at fault
    assert expected in error and f"metadata/{split}/{named}" in error and "\n" not in error
    if command == "train":
        assert not checkpoint_of(project).exists()
