"""Post-hoc maps through `dawsol evaluate`, `dawsol cams`, the report and the reported-vs-reproduced table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiers import small_backbones_first
from train_fixtures import prepare_tiny_data, run_in, write_project

from dawsol.config import Cell, load_params, resolve
from dawsol.evaluation.scoring import score_split
from dawsol.models import build_model
from dawsol.protocol import metrics_dict
from dawsol.protocol.evaluator import evaluate_split
from dawsol.report.reported import compare, reproduced_values
from dawsol.report.tables import load_metrics

CELL = "synthetic/resnet18/cam-mmd/seed0"
METHODS = ["cam", "gradcam", "gradcampp", "pcs", "bagcams"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")
    folder = write_project(
        tmp_path_factory.mktemp("posthoc"),
        data,
        datasets={"synthetic": {"eval": {"cam_methods": METHODS}, "train": {"epochs": 2}}},
        grid={"backbones": ["resnet18"], "da": ["mmd"], "seeds": [0]},
    )
    assert run_in(folder, "train", CELL, "--no-tracking") == 0
    assert run_in(folder, "evaluate", CELL, "--no-tracking") == 0
    return folder


def test_evaluate_writes_one_block_per_extractor(project: Path) -> None:
    cell_dir = project / "results" / "cells" / CELL
    metrics = json.loads((cell_dir / "metrics.json").read_text())
    assert sorted(metrics["extractors"]) == sorted(METHODS[1:])
    for block in metrics["extractors"].values():
        assert block["target_layer"] == "layer3" and block["target_module"].startswith("layer3")
        for split in ("val", "test"):
            assert 0 <= block["splits"][split]["PxAP"] <= 100
            assert block["splits"][split]["Top-1 Cls"] == metrics["splits"][split]["Top-1 Cls"]  # same logits
    # the extractors give other maps than the CAM (GradCAM at layer3 is not the CAM)
    assert metrics["extractors"]["gradcam"]["splits"]["test"]["PxAP"] != metrics["splits"]["test"]["PxAP"]
    curves = pd.read_csv(cell_dir / "curves_posthoc.csv")
    assert set(curves["method"]) == set(METHODS[1:]) and set(curves["split"]) == {"val", "test"}
    with np.load(cell_dir / "cam_samples.npz") as samples:
        assert {f"cams_{m}" for m in METHODS[1:]} <= set(samples.files)
        assert samples["cams_bagcams"].shape == samples["cams"].shape


@pytest.mark.parametrize(
    ("backbone", "size"),
    small_backbones_first(
        [("resnet18", 32), ("resnet50", 32), ("vgg16", 32), ("inception_v3", 80), ("efficientnet_lite0", 32)]
    ),
)
def test_every_extractor_scores_a_split_on_every_backbone(project: Path, backbone: str, size: int) -> None:
    """score_split (validation's and `dawsol evaluate`'s) with every extractor on an untrained model."""
    import dataclasses

    params = load_params(project / "params.yaml")
    settings = resolve(f"synthetic/{backbone}/cam-none/seed0", params, project / "params.yaml")
    settings = dataclasses.replace(
        settings,
        data=dataclasses.replace(settings.data, image_size=size, root=str(project / "data")),
        model=dataclasses.replace(settings.model, pretrained="none"),
    )
    torch.manual_seed(0)
    model = build_model(settings.model, 3, settings.wsol)
    result = score_split(model, settings, "val", torch.device("cpu"), keep=2, posthoc=METHODS)
    assert sorted(result.posthoc) == sorted(METHODS[1:])
    for name, extracted in result.posthoc.items():
        assert extracted.metrics["num_images"] == result.metrics["num_images"] == 6, name
        assert len(extracted.scoremaps) == 2 and extracted.scoremaps[0].shape == (size, size)
        assert all(np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1 for m in extracted.scoremaps)
    assert not any(p.grad is not None for p in model.parameters())


def test_dawsol_cams_writes_the_protocols_maps_that_dawsol_metrics_reads(project: Path) -> None:
    """`dawsol cams` + the standalone evaluator give the numbers `dawsol evaluate` put in metrics.json."""
    out = project / "bagcams_test"
    checkpoint = project / "runs" / CELL / "checkpoint.pt"
    assert (
        run_in(
            project,
            "cams",
            "--checkpoint",
            str(checkpoint),
            "--method",
            "bagcams",
            "--split",
            "test",
            "--out",
            str(out),
        )
        == 0
    )
    files = sorted(out.rglob("*.npy"))
    ids = (project / "data/synthetic/metadata/test/image_ids.txt").read_text().split()
    assert len(files) == len(ids)
    box, mask = evaluate_split(
        project / "data/synthetic/metadata/test",
        out,
        mask_root=project / "data/synthetic",
        size=32,
        cam_curve_interval=0.01,
    )
    standalone = metrics_dict(box, mask)
    evaluated = json.loads((project / "results/cells" / CELL / "metrics.json").read_text())
    test = evaluated["extractors"]["bagcams"]["splits"]["test"]
    assert standalone["PxAP"] == pytest.approx(test["PxAP"], abs=1e-9)
    assert standalone["MaxBoxAccV2"] == pytest.approx(test["MaxBoxAccV2"], abs=1e-9)


def test_dawsol_cams_replaces_only_its_own_folders(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = project / "runs" / CELL / "checkpoint.pt"
    mine = project / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    code = run_in(project, "cams", "--checkpoint", str(checkpoint), "--method", "cam", "--out", str(mine))
    assert code == 1 and "not a folder dawsol cams wrote" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "precious"
    out = project / "cam_maps"
    for _ in range(2):  # a second run replaces the first's folder
        assert run_in(project, "cams", "--checkpoint", str(checkpoint), "--method", "cam", "--out", str(out)) == 0
    assert (out / ".dawsol-cams").is_file() and not list(project.glob(".cam_maps.*"))


def test_bad_method_and_layer_are_one_line_errors(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = project / "runs" / CELL / "checkpoint.pt"
    code = run_in(
        project,
        "cams",
        "--checkpoint",
        str(checkpoint),
        "--method",
        "bagcams",
        "--layer",
        "layer9",
        "--split",
        "test",
        "--out",
        str(project / "x"),
    )
    error = capsys.readouterr().err.strip()
    assert code == 1 and "layer9" in error and "\n" not in error
    assert not (project / "x").exists()


def test_tables_and_the_comparison_take_the_extractor_rows(project: Path) -> None:
    cell = Cell("synthetic", "resnet18", "cam", "mmd", 0)
    frame = load_metrics([cell], project / "results" / "cells")
    labels = list(frame["label"])
    assert labels[0] == "CAM + DA-WSOL-MMD" and "CAM + DA-WSOL-MMD + BagCAMs" in labels
    assert "CAM + DA-WSOL-MMD + GradCAM++" in labels
    reported = pd.DataFrame(
        [
            ("synthetic", "resnet18", "cam-mmd", "bagcams", "PxAP", 90.0, "x"),
            ("synthetic", "resnet18", "cam-mmd", "bagcams-cam", "PxAP", 70.0, "x"),
        ],
        columns=["dataset", "backbone", "method", "variant", "metric", "value", "source"],
    )
    table = compare(reported, reproduced_values([cell], project / "results" / "cells")).set_index("variant")
    metrics = json.loads((project / "results/cells" / CELL / "metrics.json").read_text())
    assert table.loc["bagcams", "reproduced"] == pytest.approx(
        metrics["extractors"]["bagcams"]["splits"]["test"]["PxAP"]
    )
    assert table.loc["bagcams-cam", "reproduced"] == pytest.approx(metrics["splits"]["test"]["PxAP"])


def test_library_methods_score_a_split_and_dawsol_cams_writes_the_same_maps(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pytorch-grad-cam's methods through score_split (with their time per image) and `dawsol cams`."""
    from dawsol.checkpoints.format import load_checkpoint, model_from_state, stored_settings

    checkpoint = project / "runs" / CELL / "checkpoint.pt"
    state = load_checkpoint(checkpoint)
    settings = stored_settings(state)
    model = model_from_state(state, torch.device("cpu"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        result = score_split(model, settings, "test", torch.device("cpu"), posthoc=["cam", "layercam", "scorecam"])
    assert sorted(result.posthoc) == ["layercam", "scorecam"]
    assert result.seconds_per_image > 0 and all(r.seconds_per_image > 0 for r in result.posthoc.values())
    out = project / "layercam_test"
    args = ["--checkpoint", str(checkpoint), "--split", "test", "--out", str(out)]
    assert run_in(project, "cams", "--method", "layercam", *args) == 0
    box, mask = evaluate_split(
        project / "data/synthetic/metadata/test",
        out,
        mask_root=project / "data/synthetic",
        size=32,
        cam_curve_interval=settings.eval.cam_curve_interval,
    )
    assert metrics_dict(box, mask)["PxAP"] == pytest.approx(result.posthoc["layercam"].metrics["PxAP"], abs=1e-9)
    capsys.readouterr()
    assert run_in(project, "cams", "--method", "layer-cam", *args[:-2], "--out", str(project / "y")) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "unknown extractor 'layer-cam'" in error and "ablationcam" in error
    assert not (project / "y").exists()


def test_fullgrad_block_names_no_target_layer_it_does_not_read() -> None:
    from types import SimpleNamespace

    from dawsol.evaluation.cell import _extractor_blocks

    settings = resolve(CELL, load_params(Path(__file__).resolve().parent.parent / "params.yaml"))
    model = build_model(settings.model, settings.data.num_classes, settings.wsol)
    result = SimpleNamespace(posthoc={name: SimpleNamespace(metrics={"PxAP": 1.0}) for name in ("gradcam", "fullgrad")})
    blocks = _extractor_blocks(settings, model, {"val": result, "test": result})
    assert blocks["gradcam"]["target_layer"] == "layer3" and blocks["gradcam"]["target_module"].startswith("layer3")
    assert blocks["fullgrad"]["target_layer"] is None and blocks["fullgrad"]["target_module"] is None
    assert blocks["fullgrad"]["splits"]["test"] == {"PxAP": 1.0}
