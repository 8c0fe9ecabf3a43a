"""Command-line overrides (``dawsol train <cell> train.epochs=1``) and ``dawsol resolve --diff`` on a tiny project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from train_fixtures import prepare_tiny_data, run_in, write_project

from dawsol import cli
from dawsol.checkpoints.format import load_checkpoint
from dawsol.commands.train import _dawsol_args
from dawsol.config import apply_overrides, load_params, resolve

CELL = "synthetic/resnet18/cam-none/seed0"


def _resolve_out(project: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run_in(project, "resolve", CELL, *args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_overrides_train_evaluate_and_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = {"datasets": ["synthetic"], "backbones": ["resnet18"], "wsol": ["cam"], "da": ["none"], "seeds": [0]}
    project = write_project(tmp_path / "project", prepare_tiny_data(tmp_path / "data" / "synthetic"), grid=grid)
    code, _, err = _resolve_out(project, capsys, "--diff")
    assert code == 1 and f"{CELL} has not run" in err

    # the override may come after an option too; the checkpoint records the overridden settings
    assert run_in(project, "train", CELL, "--no-tracking", "train.epochs=1") == 0
    state = load_checkpoint(project / "runs" / CELL / "checkpoint.pt")
    assert state["epoch"] == state["settings"]["train"]["epochs"] == 1
    params = load_params(project / "params.yaml")
    overridden = resolve(CELL, apply_overrides(params, CELL, ["train.epochs=1"]))
    assert state["settings_digest"] == overridden.digest()

    # without the override the cell's settings are params.yaml's: its checkpoint does not fit them
    capsys.readouterr()
    assert run_in(project, "evaluate", CELL, "--no-tracking") == 1
    assert "checkpoint was trained with other settings" in capsys.readouterr().err
    assert run_in(project, "evaluate", CELL, "train.epochs=1", "--no-tracking") == 0
    metrics = json.loads((project / "results" / "cells" / CELL / "metrics.json").read_text())
    assert metrics["settings_digest"] == overridden.digest()

    code, out, _ = _resolve_out(project, capsys, "--diff")
    assert code == 0
    assert "train.epochs: 1 -> 3" in out and "training re-runs: weights digest" in out
    assert "evaluated with other settings" in out
    code, out, _ = _resolve_out(project, capsys, "--diff", "train.epochs=1")
    assert code == 0 and "no change(s)" in out and "evaluated with these settings" in out

    # an eval change against the checkpoint and the last `dawsol settings` (DVC's trigger)
    assert run_in(project, "settings") == 0
    tree = yaml.safe_load((project / "params.yaml").read_text())
    tree["defaults"]["eval"]["iou_thresholds"] = [50]
    (project / "params.yaml").write_text(yaml.safe_dump(tree))
    code, out, _ = _resolve_out(project, capsys, "--diff", "train.epochs=1")
    assert code == 0
    assert out.count("eval.iou_thresholds: [30, 50, 70] -> [50]") == 2, out
    assert "resolved.json" in out and "training is current" in out


def test_overrides_reach_the_torchrun_processes() -> None:
    args = cli.build_parser().parse_args(["train", CELL, "train.epochs=2", "--device", "cuda"])
    assert _dawsol_args(args)[:3] == ["train", CELL, "train.epochs=2"]
    assert cli.build_parser().parse_args(["resolve", CELL, "a=1", "b=2"]).overrides == ["a=1", "b=2"]


def test_an_unknown_option_is_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["resolve", CELL, "--jsn", "train.epochs=2"])
    assert "unrecognized arguments: --jsn" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["cells", "train.epochs=2"])  # a command without overrides
