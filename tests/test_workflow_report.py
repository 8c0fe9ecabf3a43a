"""`dawsol report` on result files written like the cells' real ones (tables, figures, MLflow)."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from workflow_fixtures import CODE, METRIC_NAMES, cell_value, write_cell, write_dataset

from dawsol.cli import main
from dawsol.config import grid_cells, load_params


@pytest.fixture
def fake_results(tmp_path: Path, params_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default grid's 9 cells with known metrics, in a temporary project folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_dataset(tmp_path / "data" / "synthetic")
    for cell in grid_cells(load_params(params_copy), params_copy):
        write_cell(tmp_path, cell)
    return tmp_path


def _expected(da: str, metric: str) -> str:
    from dawsol.config import Cell

    values = [cell_value(Cell("synthetic", "efficientnet_lite0", "cam", da, s), metric) for s in (0, 1, 2)]
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


@pytest.mark.slow
def test_report_tables_mean_std_and_bold_best(fake_results: Path) -> None:
    assert main(["report", "--no-tracking"]) == 0
    md = (fake_results / "results/tables/synthetic.md").read_text()
    rows = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith("| EfficientNet-Lite0")}
    assert set(rows) == {"CAM", "CAM + DA-WSOL-MMD", "CAM + DA-WSOL-DANN"}
    for metric in METRIC_NAMES:
        assert metric in md
    # MMD is best (+10) in every column: bold; CAM and DANN are not.
    assert rows["CAM + DA-WSOL-MMD"].count("**") == 2 * len(METRIC_NAMES)
    assert "**" not in rows["CAM"] and "**" not in rows["CAM + DA-WSOL-DANN"]
    assert f"**{_expected('mmd', 'PxAP')}**" in rows["CAM + DA-WSOL-MMD"]
    assert _expected("none", "MaxBoxAccV2") in rows["CAM"]

    csv = pd.read_csv(fake_results / "results/tables/synthetic.csv")
    cam = csv[csv["method"] == "cam-none"].iloc[0]
    assert cam["seeds"] == 3
    assert cam["PxAP_mean"] == pytest.approx(41.0 + 2.0)
    assert cam["PxAP_std"] == pytest.approx(1.0)

    tex = (fake_results / "results/tables/synthetic.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\textbf{" + _expected("mmd", "GT-known Loc").replace("±", "$\\pm$") + "}" in tex

    for kind in ("cams", "boxacc", "pxpr", "training"):
        assert (fake_results / f"results/figures/synthetic_{kind}.png").stat().st_size > 1000
    html = (fake_results / "results/tables/synthetic.html").read_text()
    assert '<meta charset="utf-8">' in html and "±" in html  # a browser shows "±", not "Â±"
    plot = pd.read_csv(fake_results / "results/plots/synthetic/efficientnet_lite0_cam-mmd.csv")
    assert len(plot) == 12 and {"threshold", "BoxAcc_50", "precision", "recall"} <= set(plot.columns)


def test_report_missing_cell_is_one_line_error(fake_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (fake_results / "results/cells/synthetic/efficientnet_lite0/cam-dann/seed1/metrics.json").unlink()
    assert main(["report", "--no-tracking"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cam-dann/seed1/metrics.json" in err and "dawsol evaluate synthetic/efficientnet_lite0/cam-dann/seed1" in err


@pytest.mark.slow
def test_report_only_supported_columns(fake_results: Path, params_copy: Path) -> None:
    """A dataset without masks has no PxAP / pIoU columns."""
    for path in (fake_results / "results/cells").rglob("metrics.json"):
        data = json.loads(path.read_text())
        data["splits"]["test"].update({"PxAP": None, "pIoU": None})
        path.write_text(json.dumps(data))
    assert main(["report", "--no-tracking"]) == 0
    csv = pd.read_csv(fake_results / "results/tables/synthetic.csv")
    assert "PxAP_mean" not in csv.columns and "MaxBoxAccV2_mean" in csv.columns


@pytest.mark.slow
def test_report_is_one_grid_parent_run_with_the_cells_nested(fake_results: Path, params_copy: Path) -> None:
    from mlflow import MlflowClient

    from dawsol import tracking

    client, experiment_id = tracking.init_store()
    cells = [c for c in grid_cells(load_params(params_copy), params_copy) if c.trial is None]
    children = {}
    for cell in cells:
        run = client.create_run(experiment_id, run_name=cell.name, tags={tracking.CELL_TAG: cell.name})
        children[cell.name] = run.info.run_id
    assert main(["report"]) == 0
    assert main(["report"]) == 0  # a re-run reuses the grid's run
    client = MlflowClient(tracking_uri=f"sqlite:///{fake_results / 'mlflow.db'}")
    runs = client.search_runs([experiment_id], filter_string="tags.`dawsol.kind` = 'grid'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name.startswith("grid ") and run.info.run_name.endswith(f" · {len(cells)} cells of synthetic")
    assert run.data.tags["mlflow.source.name"] == "dawsol report" and run.data.tags["mlflow.user"]
    assert run.data.metrics == {}  # the means and stds are the summary runs' metrics, not the grid run's
    for cell, run_id in children.items():
        assert client.get_run(run_id).data.tags[tracking.PARENT_TAG] == run.info.run_id, cell
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "tables")}
    assert {"tables/synthetic.tex", "tables/synthetic.html", "tables/reported_vs_reproduced.md"} <= artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/synthetic_cams.png" in figures

    retrained = cells[0]  # a new code version of one cell: a grid run of its own, the cells nested there
    write_cell(fake_results, retrained, code={**CODE, "library": "0123456789ab"})
    assert main(["report"]) == 0
    runs = client.search_runs([experiment_id], filter_string="tags.`dawsol.kind` = 'grid'")
    assert len(runs) == 2 and "of 2 code versions" in runs[0].info.run_name
    assert client.get_run(children[retrained.name]).data.tags[tracking.PARENT_TAG] == runs[0].info.run_id


@pytest.mark.skipif(
    shutil.which("pdflatex") is None, reason="pdflatex not installed (apt-get install texlive-latex-recommended)"
)
def test_latex_table_compiles(fake_results: Path) -> None:
    assert main(["report", "--no-tracking"]) == 0
    doc = fake_results / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        "\\input{results/tables/synthetic.tex}\n\\end{document}\n"
    )
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=fake_results,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert (fake_results / "doc.pdf").stat().st_size > 1000


def test_tables_carry_the_no_model_baselines_of_the_test_split(fake_results: Path, params_copy: Path) -> None:
    """The centre and random rows equal `dawsol metrics --baseline` at the cells' size and thresholds; never bold."""
    from dawsol.config import resolve

    assert main(["report", "--no-tracking"]) == 0
    settings = resolve(grid_cells(load_params(params_copy), params_copy)[0], load_params(params_copy), params_copy)
    csv = pd.read_csv(fake_results / "results/tables/synthetic.csv").set_index("method")
    md = (fake_results / "results/tables/synthetic.md").read_text()
    for name, label in (("center", "Centre baseline (no model)"), ("random", "Random 16x16 maps (no model)")):
        out = fake_results / f"{name}.json"
        args = ["metrics", "-q", "--metadata", "data/synthetic/metadata/test", "--baseline", name]
        args += ["--size", str(settings.data.image_size), "--cam-curve-interval", str(settings.eval.cam_curve_interval)]
        assert main([*args, "--out", str(out)]) == 0
        expected = json.loads(out.read_text())
        assert csv.loc[f"{name}-none", "MaxBoxAccV2_mean"] == pytest.approx(expected["MaxBoxAccV2"], abs=1e-4)
        assert csv.loc[f"{name}-none", "GT-known Loc_mean"] == pytest.approx(expected["GT-known Loc"], abs=1e-4)
        row = next(line for line in md.splitlines() if label in line)
        assert "**" not in row and row.startswith("| — |")


@pytest.mark.slow
def test_the_baselines_are_evaluated_once_per_split_and_settings(
    fake_results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluated where the data is, then read from runs/baselines/; written to results/baselines/ by every report,
    the same bytes while nothing changes (a rerun does not touch git)."""
    import dawsol.report.baselines as baselines

    calls = []
    real = baselines.evaluate_split
    monkeypatch.setattr(baselines, "evaluate_split", lambda *a, **k: calls.append(k["baseline"]) or real(*a, **k))
    result = fake_results / "results/baselines/synthetic.json"
    assert main(["report", "--no-tracking"]) == 0
    first = (fake_results / "results/tables/synthetic.csv").read_text()
    written = result.read_bytes()
    record = json.loads(written)
    assert set(record["baselines"]) == {"center", "random"}
    assert record["settings"] == {"image_size": 96, "cam_curve_interval": 0.001, "iou_thresholds": [30, 50, 70]}
    assert set(record["test_metadata"]) >= {"image_ids.txt", "localization.txt"}
    inode = result.stat().st_ino

    assert main(["report", "--no-tracking"]) == 0
    assert calls == ["center", "random"]  # the second report read runs/baselines/
    assert (fake_results / "results/tables/synthetic.csv").read_text() == first
    assert result.stat().st_ino != inode and result.read_bytes() == written  # rewritten, the same bytes

    shutil.rmtree(fake_results / "runs/baselines")
    assert main(["report", "--no-tracking"]) == 0
    assert calls == ["center", "random"] * 2  # evaluated again: the same bytes
    assert result.read_bytes() == written
