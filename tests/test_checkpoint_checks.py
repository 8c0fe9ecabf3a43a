"""Checkpoints are checked where they are loaded, before any output is replaced: the file's kind, the head's class
count against the settings, finite weights; in evaluate, localize, cams and import-checkpoint (``--inspect`` too)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import prepare_tiny_data, run_in, write_project

from dawsol.checkpoints.format import imported_state, load_checkpoint, model_from_state, save_checkpoint
from dawsol.cli import main
from dawsol.config import load_params, resolve
from dawsol.errors import DawsolError
from dawsol.layout import checkpoint_path, evaluate_outputs
from dawsol.models import build_model

PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")
CELL = "synthetic/resnet18/cam-none/seed0"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny prepared project whose cell holds an imported (untrained, finite) checkpoint and old outputs."""
    data = prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")
    return write_project(tmp_path_factory.mktemp("project"), data)


def _write_checkpoint(project: Path, damage: str | None = None) -> Path:
    """The cell's checkpoint as ``imported_state`` writes it, then damaged: ``nan``, ``head`` (one class more in
    the header and the head) or ``text`` (not a torch file)."""
    settings = resolve(CELL, load_params(project / "params.yaml"), project / "params.yaml")
    torch.manual_seed(0)
    model = build_model(
        dataclasses.replace(settings.model, pretrained="none"), settings.data.num_classes, settings.wsol
    )
    state = imported_state(settings, model, {"source": "test", "format": "da-wsol"})
    path = project / checkpoint_path(settings.cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "nan":
        state["model"]["trunk.layer1.0.conv1.weight"].fill_(float("nan"))
    elif damage == "head":
        k = settings.data.num_classes + 1
        state["num_classes"] = k
        state["model"]["classifier.weight"] = torch.zeros(k, *state["model"]["classifier.weight"].shape[1:])
        state["model"]["classifier.bias"] = torch.zeros(k)
    if damage == "text":
        path.write_text("epoch 3\nweights: none\n")
    else:
        save_checkpoint(path, state)
    return path


def _old_metrics(project: Path) -> Path:
    metrics = project / evaluate_outputs(CELL)["metrics"]
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps({"cell": CELL, "old": True}))
    return metrics


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("text", "not a torch checkpoint"),
        ("nan", "1 of 122 weights hold NaN or infinite values (e.g. trunk.layer1.0.conv1.weight)"),
        (
            "head",
            "its head scores 4 classes (classifier.weight [4, 64, 1, 1]) but its settings say data.num_classes 3",
        ),
    ],
)
def test_evaluate_refuses_a_bad_checkpoint_and_keeps_the_old_metrics(
    project: Path, damage: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = _write_checkpoint(project, damage)
    metrics = _old_metrics(project)
    assert run_in(project, "evaluate", CELL, "--no-tracking", "-q") == 1
    assert expected in _one_line(capsys)
    assert json.loads(metrics.read_text()) == {"cell": CELL, "old": True}

    image = project / "mine.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(image)
    out = project / "localized"
    command = ("localize", str(image), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu", "-q")
    assert run_in(project, *command) == 1
    assert expected in _one_line(capsys) and not out.exists()
    maps = project / "maps"
    command = ("cams", "--checkpoint", str(checkpoint), "--method", "cam", "--split", "val", "--out", str(maps))
    assert run_in(project, *command, "--device", "cpu", "-q") == 1
    assert expected in _one_line(capsys) and not maps.exists()


def test_a_sound_checkpoint_still_loads(project: Path) -> None:
    state = load_checkpoint(_write_checkpoint(project))
    assert model_from_state(state, torch.device("cpu")).classifier.weight.shape[0] == 3


def test_a_text_file_is_not_a_torch_checkpoint_for_import_and_inspect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "notes.pth.tar"
    text.write_text("these are not weights\n")
    assert main(["import-checkpoint", str(text), "--inspect", "-q"]) == 1
    assert f"{text}: not a torch checkpoint" in _one_line(capsys)
    assert main(["import-checkpoint", str(text), "--cell", "cub/resnet50/cam-mmd/seed0", "--params", PARAMS, "-q"]) == 1
    assert f"{text}: not a torch checkpoint" in _one_line(capsys)
    with pytest.raises(DawsolError, match="not a torch checkpoint"):
        load_checkpoint(text)


def test_an_official_file_with_nan_weights_is_neither_imported_nor_described(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    net = torch.nn.Conv2d(3, 8, 3)
    extractor = {name: torch.full_like(tensor, float("nan")) for name, tensor in net.state_dict().items()}
    source = tmp_path / "nan.pth.tar"
    classifier = {"fc.weight": torch.full((200, 2048, 1, 1), float("nan")), "fc.bias": torch.zeros(200)}
    torch.save(
        {"architecture": "resnet50", "state_dict_extractor": extractor, "state_dict_classifier": classifier}, source
    )
    assert main(["import-checkpoint", str(source), "--inspect", "-q"]) == 1
    assert "3 of 4 weights hold NaN or infinite values" in _one_line(capsys)
    assert (
        main(["import-checkpoint", str(source), "--cell", "cub/resnet50/cam-mmd/seed0", "--params", PARAMS, "-q"]) == 1
    )
    assert "3 of 4 weights hold NaN or infinite values" in _one_line(capsys)
    assert not (tmp_path / "runs").exists()
