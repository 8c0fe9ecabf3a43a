"""The Snakemake and DVC front doors: dry runs, the Slurm profile, parity, dvc.yaml freshness."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from workflow_fixtures import BIN, copy_project, dry_run_jobs, run_tool

from dawsol.config import grid_cells, load_params
from dawsol.layout import evaluate_outputs, report_outputs, train_outputs
from dawsol.pipeline.dvcfile import render_dvc_yaml


@pytest.fixture
def project(tmp_path: Path, project_root: Path) -> Path:
    return copy_project(project_root, tmp_path / "project")


@pytest.mark.slow
def test_dry_run_default_grid(project: Path) -> None:
    result = run_tool(["snakemake", "-n", "-p", "--cores", "2"], project)
    jobs = dry_run_jobs(result.stdout)
    assert jobs == {"prepare_synthetic": 1, "train": 9, "evaluate": 9, "report": 1, "all": 1}
    for cell in grid_cells(load_params(project / "params.yaml"), project / "params.yaml"):
        assert f"OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 dawsol train {cell.name} >" in result.stdout
        assert f"dawsol evaluate {cell.name} >" in result.stdout
    assert not (project / "mlflow.db").exists(), "a dry run must not create the MLflow store"


@pytest.mark.slow
def test_a_fresh_clone_with_the_committed_results_runs_every_cell(project: Path, project_root: Path) -> None:
    """The committed tables, figures and metrics.json must not make the main job a no-op."""
    shutil.copytree(project_root / "results", project / "results", ignore=shutil.ignore_patterns("cam_samples.npz"))
    now = time.time_ns()  # a checkout: every committed file as new as the others
    for path in (project / "results").rglob("*"):
        os.utime(path, ns=(now, now))
    assert (project / "results" / "tables" / "synthetic.md").is_file()
    jobs = dry_run_jobs(run_tool(["snakemake", "-n", "--cores", "2"], project).stdout)
    assert jobs == {"prepare_synthetic": 1, "train": 9, "evaluate": 9, "report": 1, "all": 1}


@pytest.mark.slow
def test_profile_selects_overlay(project: Path) -> None:
    """`--config profile=NAME` selects a params.yaml profile (popped before schema validation)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params.setdefault("profiles", {})["two"] = {"grid": {**params["grid"], "da": ["none"], "seeds": [0, 1]}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run_tool(["snakemake", "-n", "--cores", "1", "--config", "profile=two", "-p"], project)
    assert dry_run_jobs(result.stdout)["train"] == 2
    assert "dawsol train synthetic/efficientnet_lite0/cam-none/seed1 --profile two" in result.stdout


@pytest.mark.slow
def test_slurm_dry_run(project: Path) -> None:
    result = run_tool(["snakemake", "-n", "--profile", "workflow/profiles/slurm"], project)
    assert dry_run_jobs(result.stdout)["train"] == 9
    blocks = result.stdout.split("\nrule ")
    train = next(b for b in blocks if b.startswith("train:"))
    report = next(b for b in blocks if b.startswith("report:"))
    # synthetic cells train on the CPU (params.yaml resources.train_gpus)
    assert "slurm_partition=gpu" in train and "gpu=0" in train and "runtime=1440" in train
    assert "slurm_partition=cpu" in report and "gpu=0" in report


def snakemake_outputs(project: Path) -> dict[str, set[str]]:
    """Rule -> the output files of the full DAG, from `snakemake --summary`."""
    result = run_tool(["snakemake", "--summary", "--cores", "1"], project)
    outputs: dict[str, set[str]] = {}
    for line in result.stdout.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) > 2:
            rule = "prepare" if fields[2].startswith("prepare_") else fields[2]
            outputs.setdefault(rule, set()).add(fields[0])
    return outputs


def dvc_outputs(project: Path) -> dict[str, set[str]]:
    """Stage group -> the outputs (outs, metrics, plots) declared in dvc.yaml, as DVC parses it."""
    from dvc.repo import Repo

    outputs: dict[str, set[str]] = {}
    with Repo(str(project), uninitialized=True) as repo:
        for stage in repo.index.stages:
            group = stage.name.split("@")[0].split("_")[0]
            outputs.setdefault(group, set()).update(str(out.def_path) for out in stage.outs)
    return outputs


@pytest.mark.slow
def test_snakemake_and_dvc_declare_the_same_cells_and_outputs(project: Path) -> None:
    params = load_params(project / "params.yaml")
    cells = grid_cells(params, "params.yaml")
    smk = snakemake_outputs(project)
    dvc = dvc_outputs(project)
    assert dvc.pop("settings")  # DVC's per-cell re-run trigger (Snakemake uses the digest as params)
    assert set(smk) - {"all"} == set(dvc) == {"prepare", "train", "evaluate", "report"}
    for stage in dvc:
        assert smk[stage] == dvc[stage], stage
    assert smk["train"] == {p.as_posix() for c in cells for p in train_outputs(c).values()}
    assert smk["evaluate"] == {p.as_posix() for c in cells for p in evaluate_outputs(c).values()}
    expected_report = {p.as_posix() for group in report_outputs(params, "params.yaml").values() for p in group}
    assert smk["report"] == expected_report


def test_dvc_yaml_is_current(project_root: Path) -> None:
    """The committed dvc.yaml is exactly what `dawsol dvc-yaml` generates from params.yaml."""
    params = load_params(project_root / "params.yaml")
    expected = render_dvc_yaml(params, "params.yaml")
    assert (project_root / "dvc.yaml").read_text() == expected, "run `dawsol dvc-yaml` and commit dvc.yaml"


def test_dvc_yaml_check_detects_a_grid_change(project: Path) -> None:
    run_tool(["dawsol", "dvc-yaml", "--check"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["grid"]["seeds"] = [0]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [str(BIN / "dawsol"), "dvc-yaml", "--check"], cwd=project, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1 and "dvc.yaml is out of date" in result.stderr
    run_tool(["dawsol", "dvc-yaml"], project)
    assert dvc_outputs(project)["train"] == {
        p.as_posix()
        for c in ("cam-none", "cam-mmd", "cam-dann")
        for p in train_outputs(f"synthetic/efficientnet_lite0/{c}/seed0").values()
    }


@pytest.mark.slow
def test_dvc_exp_run_with_a_changed_grid_fails_before_training(project: Path) -> None:
    """`dvc exp run -S grid...` with the old dvc.yaml stops in the settings stage, naming dvc.yaml;
    after `dawsol dvc-yaml` the stages are the new grid's and the check passes."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synthetic"].update(train_per_class=2, val_per_class=1, test_per_class=1)  # a quick prepare
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_tool(["dawsol", "dvc-yaml", "--check"], project)
    git = ["git", "-c", "user.name=dawsol", "-c", "user.email=dawsol@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "grid"], cwd=project, check=True)
    assert "dawsol dvc-yaml --check" in run_tool(["dvc", "repro", "settings"], project).stdout

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [str(BIN / "dvc"), "exp", "run", "-S", "grid.seeds=[0,1]"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("dawsol: error:")]
    assert len(errors) == 1 and "dvc.yaml is out of date" in errors[0], result.stderr
    assert "run `dawsol dvc-yaml`, then `dvc repro` or `dvc exp run` again" in errors[0]
    assert "Running stage 'train" not in result.stdout and not list((project / "runs").rglob("checkpoint.pt"))

    # -S wrote the new grid into params.yaml: regenerate, and the settings stage (the check) passes
    run_tool(["dawsol", "dvc-yaml"], project)
    assert "Running stage 'settings'" in run_tool(["dvc", "repro", "settings"], project).stdout
    assert dvc_outputs(project)["train"] == {
        p.as_posix()
        for c in ("cam-none", "cam-mmd", "cam-dann")
        for seed in (0, 1)
        for p in train_outputs(f"synthetic/efficientnet_lite0/{c}/seed{seed}").values()
    }


def test_settings_change_only_the_cells_they_concern(project: Path) -> None:
    """`dawsol settings` (DVC's per-cell trigger): a lambda1 change for MMD rewrites only MMD cells' files, and an
    eval change rewrites resolved.json only, never resolved_weights.json (training's trigger)."""
    run_tool(["dawsol", "settings"], project)
    files = sorted((project / "runs").rglob("resolved.json"))
    assert len(files) == 9
    before = {f: f.read_text() for f in files}
    weights = {f: f.with_name("resolved_weights.json").read_text() for f in files}
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tuned"]["synthetic/efficientnet_lite0/cam-mmd"]["da"]["mmd"]["lambda1"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_tool(["dawsol", "settings"], project)
    changed = {f.relative_to(project / "runs").parts[2] for f in files if f.read_text() != before[f]}
    assert changed == {"cam-mmd"}
    before = {f: f.read_text() for f in files}
    params["datasets"]["synthetic"]["eval"]["cam_methods"] = ["cam", "gradcam"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_tool(["dawsol", "settings"], project)
    assert all(f.read_text() != before[f] for f in files)
    weights_now = {f: f.with_name("resolved_weights.json").read_text() for f in files}
    changed_weights = {f.relative_to(project / "runs").parts[2] for f in files if weights_now[f] != weights[f]}
    assert changed_weights == {"cam-mmd"}  # the lambda1 change only
