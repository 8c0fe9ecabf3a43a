"""`dawsol report` on what a fresh clone has: the committed results, no data, training logs or CAM samples.

What such a report cannot recompute (the baseline rows, the training and CAM figures, the post-hoc table's
measured seconds) is kept as it was; it draws the rest and names what is missing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow_report import fake_results  # noqa: F401 (a fixture)

from dawsol.cli import main
from dawsol.config import load_params
from dawsol.layout import RESULTS, baselines_path, report_outputs

KEPT = "kept results/figures/synthetic_{}.png: "
UNPREPARED = "data/synthetic/metadata/test is missing (run `dawsol prepare synthetic`)"


def _outputs(root: Path, params: Path) -> dict[str, bytes]:
    """The report's outputs under ``root`` by path (the grid of ``params``), read as bytes."""
    paths = [path for group in report_outputs(load_params(params), params).values() for path in group]
    return {path.as_posix(): (root / path).read_bytes() for path in paths if (root / path).is_file()}


def _as_a_fresh_clone(root: Path) -> None:
    """What git does not keep: the data, the DVC outputs (training logs, checkpoints, the baselines' cache), the
    CAM samples."""
    shutil.rmtree(root / "runs")
    shutil.rmtree(root / "data")
    for samples in (root / "results/cells").rglob("cam_samples.npz"):
        samples.unlink()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.slow
def test_a_fresh_clone_keeps_what_it_cannot_recompute_and_says_so(
    fake_results: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    params = fake_results / "params.yaml"
    assert main(["report", "--no-tracking"]) == 0
    full = _outputs(fake_results, params)
    assert "results/baselines/synthetic.json" in full
    _as_a_fresh_clone(fake_results)
    caplog.clear()

    assert main(["report", "--no-tracking"]) == 0
    assert _outputs(fake_results, params) == full  # every table, figure, plot and baseline: the same bytes
    warnings = _warnings(caplog)
    assert any(w == f"report: {KEPT.format('cams')}{UNPREPARED}" for w in warnings), warnings
    training = KEPT.format("training") + "9 of 9 cells without training log"
    assert any(w.startswith(f"report: {training}") and "dvc pull" in w for w in warnings), warnings
    assert not any("baseline" in w for w in warnings), warnings
    csv = pd.read_csv(fake_results / "results/tables/synthetic.csv")
    assert list(csv["method"])[-2:] == ["center-none", "random-none"]  # from results/baselines/synthetic.json


@pytest.mark.slow
def test_a_fresh_clone_without_the_committed_results_draws_what_it_can(
    fake_results: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Where nothing was there before (no baselines, no training or CAM figure), the report says what is missing."""
    assert main(["report", "--no-tracking"]) == 0
    full = _outputs(fake_results, fake_results / "params.yaml")
    _as_a_fresh_clone(fake_results)
    baselines_path("synthetic").unlink()
    figures = fake_results / "results/figures"
    for kind in ("training", "cams"):
        (figures / f"synthetic_{kind}.png").unlink()
    caplog.clear()

    assert main(["report", "--no-tracking"]) == 0
    warnings = _warnings(caplog)
    assert any(w == f"report: no baseline rows: {UNPREPARED}" for w in warnings), warnings
    assert any(w.startswith("report: no training curves drawn: 9 of 9 cells without training log") for w in warnings)
    assert any(w == f"report: no CAMs drawn: {UNPREPARED}" for w in warnings), warnings
    csv = pd.read_csv(fake_results / "results/tables/synthetic.csv")
    assert list(csv["method"]) == ["cam-none", "cam-mmd", "cam-dann"]  # the cells; the baselines need the data
    assert "Missing: no baseline rows" in (fake_results / "results/tables/synthetic.md").read_text()
    assert not baselines_path("synthetic").exists()
    for kind in ("boxacc", "pxpr"):  # from the committed curves: as before
        assert (figures / f"synthetic_{kind}.png").read_bytes() == full[f"results/figures/synthetic_{kind}.png"]
    for kind in ("training", "cams"):  # a figure of what is missing
        assert (
            1000
            < (figures / f"synthetic_{kind}.png").stat().st_size
            < len(full[f"results/figures/synthetic_{kind}.png"])
        )


@pytest.mark.slow
def test_committed_baselines_of_other_settings_are_not_shown_and_kept(
    fake_results: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert main(["report", "--no-tracking"]) == 0
    committed = baselines_path("synthetic").read_bytes()
    _as_a_fresh_clone(fake_results)
    params = yaml.safe_load((fake_results / "params.yaml").read_text())
    params["defaults"]["eval"]["cam_curve_interval"] = 0.01
    (fake_results / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    caplog.clear()

    assert main(["report", "--no-tracking"]) == 0
    note = next(w for w in _warnings(caplog) if "no baseline rows" in w)
    assert "results/baselines/synthetic.json holds them at" in note and "cam_curve_interval 0.001" in note
    assert "not the cells' image_size 96, cam_curve_interval 0.01" in note and note.endswith(UNPREPARED)
    assert list(pd.read_csv(fake_results / "results/tables/synthetic.csv")["method"])[-1] == "cam-dann"
    assert baselines_path("synthetic").read_bytes() == committed


def test_a_broken_baselines_file_is_a_one_line_error(
    fake_results: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["report", "--no-tracking"]) == 0
    tables = (fake_results / "results/tables/synthetic.md").read_bytes()
    _as_a_fresh_clone(fake_results)
    baselines_path("synthetic").write_text(json.dumps({"dataset": "synthetic", "baselines": {}}))
    capsys.readouterr()

    assert main(["report", "--no-tracking"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("dawsol: error: results/baselines/synthetic.json: not a baselines record"), err
    assert "git checkout results/baselines/synthetic.json" in err and "dawsol prepare synthetic" in err
    assert (fake_results / "results/tables/synthetic.md").read_bytes() == tables


@pytest.mark.parametrize("profile", [None, "photos"])
def test_a_fresh_clone_report_changes_no_committed_result(
    profile: str | None,
    project_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The repository's own results/ (timing records included) and params.yaml, without data or runs: a report
    rewrites every table, plot and baseline with the same bytes and keeps the figures it cannot draw."""
    shutil.copytree(project_root / RESULTS, tmp_path / RESULTS)
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    dataset = "photos" if profile else "synthetic"
    outputs = report_outputs(load_params(params, profile), params)
    drawn = {p.as_posix() for p in outputs["figures"] if p.stem.endswith(("_boxacc", "_pxpr"))}  # by this matplotlib
    committed = {p.as_posix(): (project_root / p).read_bytes() for group in outputs.values() for p in group}
    assert f"results/baselines/{dataset}.json" in committed

    assert main(["report", "--no-tracking", *(["--profile", profile] if profile else [])]) == 0
    for path, content in committed.items():
        if path not in drawn:
            assert (tmp_path / path).read_bytes() == content, path
    warnings = _warnings(caplog)
    assert any(w.startswith(f"report: kept results/figures/{dataset}_cams.png: data/{dataset}/") for w in warnings)
    assert any(w.startswith(f"report: kept results/figures/{dataset}_training.png: 9 of 9 cells") for w in warnings)
