"""The paper profile: its dry runs list every cell with the right settings (Snakemake, Slurm, DVC),
and a tiny dataset in CUB's real layout goes through prepare -> train -> evaluate -> report
under the paper profile's code path."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_data_sources import make_fake_cub, server  # noqa: F401 - the local HTTP server fixture
from train_fixtures import PROJECT_ROOT
from workflow_fixtures import copy_project, dry_run_jobs, run_tool

from dawsol import cli
from dawsol.config import grid_cells, load_params, resolve
from dawsol.data.sources import prepare_dataset
from dawsol.pipeline.dvcfile import render_dvc_yaml
from dawsol.pipeline.stages import train_gpus
from dawsol.report.reported import load_reported
from dawsol.wsol import WSOL_METHODS

PAPER_CELLS = 48


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(PROJECT_ROOT, tmp_path / "project")


def test_paper_grid_settings_follow_the_official_scripts():
    params = load_params(PROJECT_ROOT / "params.yaml", "paper")
    cells = grid_cells(params)
    assert len(cells) == PAPER_CELLS
    cub_inc = resolve("cub/inception_v3/cam-mmd/seed4", params)
    assert (cub_inc.train.lr, cub_inc.train.weight_decay, cub_inc.da.start_epoch) == (0.002, 0.0005, 5)
    assert (cub_inc.da.lambda1, cub_inc.da.lambda2) == (1.4, 4.0)
    ilsvrc = resolve("ilsvrc/resnet50/cam-dann/seed4", params)
    assert (ilsvrc.train.epochs, ilsvrc.train.lr, ilsvrc.data.num_classes) == (10, 0.00001, 1000)
    assert (ilsvrc.da.loss, ilsvrc.da.lambda2) == ("dann", 3.0)
    assert resolve("openimages/resnet50/cam-none/seed4", params).model.large_feature_map is False
    assert {c.seed for c in cells} == {4}
    assert [train_gpus(params, c) for c in cells if c.dataset == "ilsvrc"] == [4] * 9
    assert {train_gpus(params, c) for c in cells if c.dataset != "ilsvrc"} == {1}


def test_the_wsolevaluation_profile_covers_every_wsolevaluation_row():
    """Six methods x three backbones x three datasets without DA: a cell for each of Choe et al.'s table rows."""
    params = load_params(PROJECT_ROOT / "params.yaml", "wsolevaluation")
    cells = grid_cells(params)
    assert len(cells) == 54 and {c.da for c in cells} == {"none"}
    assert {c.wsol for c in cells} == {"cam", "has", "acol", "spg", "adl", "cutmix"}
    names = {(c.dataset, c.backbone, c.method) for c in cells}
    reported = load_reported()
    rows = reported[(reported.variant == "wsolevaluation") & (reported.backbone != "-") & (reported.dataset != "-")]
    methods = {(r.dataset, r.backbone, r.method) for r in rows.itertuples() if r.method.split("-")[0] in WSOL_METHODS}
    assert methods == names  # the table's other rows (few-shot, centre baseline) are not WSOL methods
    assert resolve("cub/vgg16/spg-none/seed4", params).wsol.options["thresholds"] == [
        [0.7, 0.01],
        [0.5, 0.05],
        [0.7, 0.1],
    ]
    assert resolve("cub/resnet50/spg-none/seed4", params).wsol.options["branch_channels"] == 1024
    acol = resolve("ilsvrc/inception_v3/acol-none/seed4", params).wsol.options
    assert dict(acol) == {"threshold": 0.7, "head_channels": 1024, "head_lr_ratio": None}
    assert dict(resolve("cub/resnet50/has-none/seed4", params).wsol.options) == {"grid_size": 4, "drop_rate": 0.5}


@pytest.mark.slow
def test_snakemake_dry_run_lists_every_paper_cell(project: Path):
    result = run_tool(["snakemake", "-n", "-p", "--cores", "1", "--config", "profile=paper"], project)
    jobs = dry_run_jobs(result.stdout)
    assert jobs["train"] == jobs["evaluate"] == PAPER_CELLS
    assert {k for k in jobs if k.startswith("prepare_")} == {"prepare_cub", "prepare_ilsvrc", "prepare_openimages"}
    for cell in grid_cells(load_params(project / "params.yaml", "paper")):
        assert f"dawsol train {cell.name} --profile paper >" in result.stdout


@pytest.mark.slow
def test_slurm_dry_run_gives_ilsvrc_cells_four_gpus(project: Path):
    result = run_tool(["snakemake", "-n", "--profile", "workflow/profiles/slurm", "--config", "profile=paper"], project)
    blocks = [b for b in result.stdout.split("\nrule ") if b.startswith("train:")]
    assert len(blocks) == PAPER_CELLS
    for block in blocks:
        gpus = 4 if "cell=ilsvrc/" in block else 1
        assert f"gpu={gpus}" in block and "slurm_partition=gpu" in block, block


@pytest.mark.slow
def test_dvc_yaml_of_the_paper_profile(project: Path):
    run_tool(["dawsol", "dvc-yaml", "--profile", "paper"], project)
    text = (project / "dvc.yaml").read_text()
    assert text == render_dvc_yaml(load_params(project / "params.yaml", "paper"), "params.yaml", "paper")
    stages = yaml.safe_load(text)["stages"]
    assert len(stages["train"]["foreach"]) == len(stages["evaluate"]["foreach"]) == PAPER_CELLS
    assert stages["train"]["do"]["cmd"] == "dawsol train ${item.cell} --profile paper"
    assert {"prepare_cub", "prepare_ilsvrc", "prepare_openimages"} <= set(stages)

    from dvc.repo import Repo

    with Repo(str(project), uninitialized=True) as repo:  # DVC itself parses all the stages
        names = [stage.name for stage in repo.index.stages]
    assert sum(name.startswith("train@") for name in names) == PAPER_CELLS


# The paper profile shrunk to two CUB-ResNet50 cells a CPU runs in a minute: 1 epoch with the DA
# terms on (start_epoch -1), random init, 32 px; every other setting is the paper's.
SHRUNK_PAPER = {
    "grid": {
        "datasets": ["cub"],
        "backbones": ["resnet50"],
        "wsol": ["cam"],
        "da": ["none", "mmd"],
        "seeds": [4],
        "exclude": [],
        "extra": [],
    },
    "datasets": {
        "cub": {
            "data": {"num_classes": 2, "image_size": 32, "resize_size": 36},
            "train": {"batch_size": 4},
            "da": {"sample_num_source": 4, "sample_num_target": 4},
        }
    },
    "pairs": {
        "cub/resnet50": {
            "model": {"pretrained": "none"},
            "train": {"epochs": 1, "eval_every": 1},
            "da": {"start_epoch": -1},
        }
    },
    "defaults": {"eval": {"cam_curve_interval": 0.01}},
}


def dawsol(project: Path, *args: str) -> None:
    previous = Path.cwd()
    os.chdir(project)
    try:
        assert cli.main([*args, "--profile", "paper"]) == 0
    finally:
        os.chdir(previous)


@pytest.mark.slow
def test_cub_layout_through_the_paper_profile(tmp_path: Path, server, monkeypatch):  # noqa: F811
    _, served, url = server
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["profiles"]["paper"].update(SHRUNK_PAPER)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "results/reference").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "results/reference/reported.csv", project / "results/reference/reported.csv")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")

    # prepare: the real CUB layout code on archives in CUB's format (CUB_200_2011.tgz, CUBV2.tar,
    # segmentations.tgz) with pinned metadata served locally instead of the network
    tables = make_fake_cub(served, url)
    assert prepare_dataset("cub", project / "data", [served / "segmentations.tgz"], **tables)
    cells = [c.name for c in grid_cells(load_params(project / "params.yaml", "paper"), project / "params.yaml")]
    assert cells == ["cub/resnet50/cam-none/seed4", "cub/resnet50/cam-mmd/seed4"]

    for cell in cells:
        dawsol(project, "train", cell)
        dawsol(project, "evaluate", cell)
    dawsol(project, "report")

    mmd = json.loads((project / "results/cells/cub/resnet50/cam-mmd/seed4/metrics.json").read_text())
    assert mmd["splits"]["test"]["num_images"] == 4 and mmd["splits"]["test"]["PxAP"] is not None
    log = [json.loads(line) for line in (project / "runs/cub/resnet50/cam-mmd/seed4/train_log.jsonl").open()]
    assert len(log) == 1 and math.isfinite(log[0]["loss_d"]) and math.isfinite(log[0]["loss_u"])
    # the DA terms were on from the first batch (start_epoch -1): the assigner took every training
    # image once (one universum centre each). Whether any of these 4x4 maps qualifies for L_d is
    # left to rounding (a label's first image seeds its class anchor with its own z), so L_d may be 0.
    checkpoint = torch.load(project / "runs/cub/resnet50/cam-mmd/seed4/checkpoint.pt", weights_only=True)
    train_images = len((project / "data/cub/metadata/train/image_ids.txt").read_text().split())
    assert train_images > 0 and int(checkpoint["da"]["assigner.universum_count"]) == train_images
    table = (project / "results/tables/cub.md").read_text()
    assert "| ResNet50 | CAM |" in table and "| ResNet50 | CAM + DA-WSOL-MMD |" in table
    compared = pd.read_csv(project / "results/tables/reported_vs_reproduced.csv")
    ours = compared[(compared["method"] == "cam-mmd") & (compared["variant"] == "one-stage")]
    assert set(ours["metric"]) == {"Top-1 Loc", "GT-known Loc", "MaxBoxAccV2", "pIoU", "PxAP"}
    v2 = ours[ours["metric"] == "MaxBoxAccV2"].iloc[0]
    assert v2["reported"] == 69.87
    assert v2["reproduced"] == pytest.approx(mmd["splits"]["test"]["MaxBoxAccV2"])
    assert v2["delta"] == pytest.approx(v2["reproduced"] - 69.87)
    assert "wsolevaluation" in set(compared[compared["method"] == "cam-none"]["variant"])
