"""Every setting that sizes memory or time is bounded in the schema, with the reason in the message; settings are
finite numbers (``.nan`` and ``.inf`` refused); ``dawsol metrics`` options share the same bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from dawsol.cli import main

CELL = "synthetic/resnet18/cam-none/seed0"
PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("eval.cam_curve_interval=1e-9", "less than the minimum of 0.0001 (1/interval CAM thresholds"),
        ("train.batch_size=100000", "greater than the maximum of 4096 (one batch must fit in memory)"),
        ("eval.batch_size=100000", "greater than the maximum of 4096 (one batch must fit in memory)"),
        ("data.image_size=5000", "greater than the maximum of 2048 (memory and time grow with its square)"),
        ("data.resize_size=5000", "greater than the maximum of 2048 (memory and time grow with its square)"),
        ("train.epochs=1000000", "greater than the maximum of 10000 (training time grows with it)"),
        ("da.sample_num_source=1000000", "greater than the maximum of 100000"),
        ("train.lr=.nan", "train.lr: nan is not a finite number"),
        ("train.lr=.inf", "train.lr: inf is not a finite number"),
        ("train.weight_decay=-.inf", "train.weight_decay: -inf is not a finite number"),
    ],
)
def test_a_runaway_setting_is_one_line_with_its_reason(
    override: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["resolve", CELL, override, "--params", PARAMS]) == 1
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err


def test_a_nan_in_params_yaml_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(Path(PARAMS).read_text().replace("    lr: 0.001\n", "    lr: .nan\n", 1))
    assert main(["resolve", CELL, "--params", str(params)]) == 1
    assert "defaults.train.lr: nan is not a finite number" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--size", "100000"], "--size: 100000 is greater than the maximum of 2048"),
        (["--cam-curve-interval", "1e-9"], "--cam-curve-interval: 1e-09 is less than the minimum of 0.0001"),
        (["--cam-curve-interval", "nan"], "--cam-curve-interval: nan is not a finite number"),
    ],
)
def test_metrics_options_have_the_same_bounds(
    option: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    argv = ["metrics", "--metadata", str(tmp_path), "--baseline", "center", "--out", str(out), *option]
    assert main(argv) == 1
    assert expected in capsys.readouterr().err and not out.exists()
