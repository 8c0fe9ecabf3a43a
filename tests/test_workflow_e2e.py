"""Tiny real end-to-end runs of both front doors in a temporary copy of the project (slow)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from workflow_fixtures import copy_project, dry_run_jobs, run_tool

from dawsol.protocol.output import HEADLINE_METRICS


@pytest.fixture
def project(tmp_path: Path, project_root: Path) -> Path:
    return copy_project(project_root, tmp_path / "project")


TINY_CELLS = ("synthetic/resnet18/cam-none/seed0", "synthetic/resnet18/cam-mmd/seed0")


def make_tiny(project: Path) -> None:
    """Shrink the default grid to CAM and DA-WSOL-MMD, one seed, 2 epochs on a few images."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synthetic"].update(train_per_class=6, val_per_class=2, test_per_class=3)
    params["datasets"]["synthetic"]["train"].update(epochs=2, batch_size=16, eval_every=2)
    params["datasets"]["synthetic"]["da"]["start_epoch"] = 0
    params["defaults"]["eval"]["cam_curve_interval"] = 0.01
    params["datasets"]["synthetic"]["data"].update(image_size=64, resize_size=72)
    params["datasets"]["synthetic"]["eval"]["cam_methods"] = ["cam", "bagcams"]
    params["grid"].update(backbones=["resnet18"], da=["none", "mmd"], seeds=[0])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def set_mmd_lambda1(project: Path, value: float) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["defaults"]["da"]["mmd"]["lambda1"] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def check_results(project: Path) -> None:
    for cell in TINY_CELLS:
        metrics = json.loads((project / "results/cells" / cell / "metrics.json").read_text())
        assert metrics["cell"] == cell and metrics["splits"]["test"]["PxAP"] is not None
        assert (project / "runs" / cell / "checkpoint.pt").is_file()
    table = (project / "results/tables/synthetic.md").read_text()
    assert "| ResNet18 | CAM |" in table and "| ResNet18 | CAM + DA-WSOL-MMD |" in table
    assert "| ResNet18 | CAM + DA-WSOL-MMD + BagCAMs |" in table  # eval.cam_methods: a row per post-hoc map
    for kind in ("cams", "boxacc", "pxpr", "training"):
        assert (project / f"results/figures/synthetic_{kind}.png").is_file()


@pytest.mark.slow
def test_snakemake_tiny_end_to_end(project: Path) -> None:
    make_tiny(project)
    run_tool(["snakemake", "--cores", "2"], project, timeout=600)
    check_results(project)
    for rule in ("prepare/synthetic", f"train/{TINY_CELLS[0]}", f"evaluate/{TINY_CELLS[1]}"):
        assert (project / "logs" / f"{rule}.log").is_file() and (project / "benchmarks/rules" / f"{rule}.tsv").is_file()
    assert (project / "mlflow.db").is_file()

    assert "Nothing to be done" in run_tool(["snakemake", "-n", "--cores", "2"], project).stdout
    set_mmd_lambda1(project, 0.5)
    rerun = run_tool(["snakemake", "-n", "--cores", "2"], project).stdout
    assert dry_run_jobs(rerun) == {"train": 1, "evaluate": 1, "report": 1, "all": 1}
    assert f"cell={TINY_CELLS[1]}" in rerun and f"cell={TINY_CELLS[0]}" not in rerun
    set_mmd_lambda1(project, 0.3)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["datasets"]["synthetic"]["eval"]["cam_methods"] = ["cam", "gradcam"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = run_tool(["snakemake", "-n", "--cores", "2"], project).stdout
    assert dry_run_jobs(rerun) == {"evaluate": 2, "report": 1, "all": 1}  # another map: evaluation only

    run_tool(["snakemake", "--report", "results/report.html"], project)
    html = (project / "results/report.html").read_text(errors="replace")
    assert "synthetic_cams.png" in html and "synthetic.html" in html and "reported_vs_reproduced.html" in html


@pytest.mark.slow
def test_dvc_tiny_repro(project: Path) -> None:
    make_tiny(project)
    git = ["git", "-c", "user.name=dawsol", "-c", "user.email=dawsol@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    run_tool(["dawsol", "dvc-yaml"], project)
    first = run_tool(["dvc", "repro"], project, timeout=600).stdout
    assert first.count("Running stage") == 1 + 1 + 2 * len(TINY_CELLS) + 1
    check_results(project)
    # Prepared data and checkpoints are DVC outs (cached), not git files: the root .gitignore covers them.
    status = subprocess.run([*git, "status", "--porcelain"], cwd=project, capture_output=True, text=True).stdout
    assert "runs/" not in status and "data/" not in status
    assert (project / ".dvc/cache").is_dir()

    second = run_tool(["dvc", "repro"], project).stdout
    assert "Running stage" not in second and "didn't change, skipping" in second

    metrics = json.loads(run_tool(["dvc", "metrics", "show", "--json"], project).stdout)[""]["data"]  # workspace
    # DVC's metrics are the cells' headline numbers (a column each), not every entry of metrics.json
    assert set(metrics) == {f"results/cells/{cell}/headline.json" for cell in TINY_CELLS}
    for shown in metrics.values():
        assert set(shown["data"]) == {"val", "test"} and set(shown["data"]["test"]) == set(HEADLINE_METRICS)
    run_tool(["dvc", "plots", "show", "--json"], project)

    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "tiny"], cwd=project, check=True)
    # A teammate's clone: `dvc pull` brings back every stage input that git does not hold (data, checkpoints,
    # resolved settings, CAM samples), so `dvc repro --dry`, which hashes each input of a stage it would run
    # and stops at a missing one (treeverse/dvc#9818), finds the committed pipeline up to date.
    run_tool(["dvc", "remote", "add", "-d", "team", str(project.parent / "dvc-store")], project)
    run_tool(["dvc", "push"], project)
    subprocess.run([*git, "commit", "-q", "-m", "remote", ".dvc/config"], cwd=project, check=True)
    clone = project.parent / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    run_tool(["dvc", "pull"], clone)
    dry = run_tool(["dvc", "repro", "--dry"], clone).stdout
    assert "Running stage" not in dry and "up to date" in dry

    variant = run_tool(["dvc", "exp", "run", "-S", "defaults.da.mmd.lambda1=0.5"], project, timeout=600).stdout
    ran = {line.split("'")[1] for line in variant.splitlines() if line.startswith("Running stage")}
    assert ran == {
        "settings",
        "train@synthetic-resnet18-cam-mmd-seed0",
        "evaluate@synthetic-resnet18-cam-mmd-seed0",
        "report",
    }


def write_wsolevaluation_vgg16(path: Path, num_classes: int) -> None:
    """A checkpoint in wsolevaluation's layout (VGG16-CAM, 14x14 map), random weights: what its main.py saves."""
    import torch

    from dawsol.config import ModelSettings, WSOLSettings
    from dawsol.models import build_model

    model = build_model(ModelSettings("vgg16", "none", False, 1.0), num_classes, WSOLSettings("cam"))
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "classifier.weight":
            state["fc.weight"] = tensor.flatten(1)  # wsolevaluation's head is a Linear [K, D]
        elif name == "classifier.bias":
            state["fc.bias"] = tensor
        else:
            state[name.removeprefix("trunk.")] = tensor
    torch.save({"architecture": "vgg16", "epoch": 3, "state_dict": state, "optimizer": {}}, path)


@pytest.mark.slow
def test_an_imported_cell_is_evaluated_and_reported_without_training(project: Path) -> None:
    """params.yaml `imports`: Snakemake imports the file instead of training, evaluates and reports the cell."""
    make_tiny(project)
    imported = "synthetic/vgg16/cam-none/seed0"
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["grid"]["extra"] = [imported]
    params["imports"] = {imported: "checkpoints/vgg16.pth.tar"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "checkpoints").mkdir()
    write_wsolevaluation_vgg16(project / "checkpoints/vgg16.pth.tar", params["synthetic"]["num_classes"])

    jobs = dry_run_jobs(run_tool(["snakemake", "-n", "--cores", "2"], project).stdout)
    assert jobs["import_checkpoint"] == 1 and jobs["train"] == len(TINY_CELLS) and jobs["evaluate"] == 3
    run_tool(["snakemake", "--cores", "2"], project, timeout=600)
    check_results(project)
    metrics = json.loads((project / "results/cells" / imported / "metrics.json").read_text())
    assert metrics["imported"]["format"] == "wsolevaluation" and len(metrics["imported"]["sha256"]) == 64
    assert not (project / "runs" / imported / "train_log.jsonl").exists()
    assert "| VGG16 | CAM |" in (project / "results/tables/synthetic.md").read_text()

    run_tool(["dawsol", "dvc-yaml"], project)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert list(stages["import"]["foreach"]) == ["synthetic-vgg16-cam-none-seed0"]
    assert "synthetic-vgg16-cam-none-seed0" not in stages["train"]["foreach"]
