"""`dawsol report` on what a fresh clone has: the committed results, no data, training logs or CAM samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_workflow_report import fake_results  # noqa: F401 (a fixture)

from dawsol.cli import main


def test_a_fresh_clone_reports_what_it_can_and_says_what_is_missing(
    fake_results: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert main(["report", "--no-tracking"]) == 0
    full = {path.name: path.read_bytes() for path in (fake_results / "results/figures").iterdir()}
    shutil.rmtree(fake_results / "runs")  # DVC outputs (train logs, checkpoints, the baselines' cache)
    shutil.rmtree(fake_results / "data")
    for samples in (fake_results / "results/cells").rglob("cam_samples.npz"):  # not committed
        samples.unlink()

    assert main(["report", "--no-tracking"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("no baseline rows: data/synthetic/metadata/test is missing" in w for w in warnings), warnings
    assert any("9 of 9 cells without training log" in w and "dvc pull" in w for w in warnings), warnings
    assert any("no CAMs drawn" in w for w in warnings), warnings
    csv = pd.read_csv(fake_results / "results/tables/synthetic.csv")
    assert list(csv["method"]) == ["cam-none", "cam-mmd", "cam-dann"]  # the cells; the baselines need the data
    assert "Missing: no baseline rows" in (fake_results / "results/tables/synthetic.md").read_text()
    figures = fake_results / "results/figures"
    for kind in ("boxacc", "pxpr"):  # from the committed curves: as before
        assert (figures / f"synthetic_{kind}.png").read_bytes() == full[f"synthetic_{kind}.png"]
    for kind in ("training", "cams"):  # drawn anew, saying what is missing
        assert (figures / f"synthetic_{kind}.png").read_bytes() != full[f"synthetic_{kind}.png"]
        assert (figures / f"synthetic_{kind}.png").stat().st_size > 1000
