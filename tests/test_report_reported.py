"""The reported vs reproduced table: matching rows, means over seeds, deltas, two-stage Top-1, renderings."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from train_fixtures import PROJECT_ROOT
from workflow_fixtures import cell_value, write_cell

from dawsol.config import parse_cell
from dawsol.report.reported import compare, load_reported, reproduced_values, write_comparison

REPORTED = """dataset,backbone,method,variant,metric,value,source
cub,resnet50,cam-mmd,one-stage,MaxBoxAccV2,69.87,DA-WSOL README
cub,resnet50,cam-mmd,one-stage,Top-1 Loc,62.40,DA-WSOL README
cub,resnet50,cam-mmd,two-stage,Top-1 Loc,66.65,DA-WSOL README
cub,resnet50,cam-none,wsolevaluation,MaxBoxAccV2,63.7,wsolevaluation
cub,resnet50,acol-none,wsolevaluation,MaxBoxAccV2,66.5,wsolevaluation
ilsvrc,resnet50,cam-mmd,one-stage,MaxBoxAccV2,68.23,DA-WSOL README
"""
CELLS = [
    parse_cell(n) for n in ("cub/resnet50/cam-mmd/seed4", "cub/resnet50/cam-mmd/seed5", "cub/resnet50/cam-none/seed4")
]


@pytest.fixture
def results(tmp_path):
    for cell in CELLS:
        write_cell(tmp_path, cell)
    # the two-stage Top-1 Loc of one seed only (predictions of a separate classifier)
    path = tmp_path / "results/cells/cub/resnet50/cam-mmd/seed4/metrics.json"
    data = json.loads(path.read_text())
    data["splits"]["test"]["Top-1 Loc (two-stage)"] = 70.0
    path.write_text(json.dumps(data))
    (tmp_path / "reported.csv").write_text(REPORTED)
    return tmp_path


def test_compare_matches_grid_methods_and_takes_the_seed_mean(results):
    table = compare(load_reported(results / "reported.csv"), reproduced_values(CELLS, results / "results/cells"))
    # acol (not a method of ours) and ilsvrc (not in the grid) are left out
    assert list(zip(table["method"], table["variant"], table["metric"], strict=True)) == [
        ("cam-mmd", "one-stage", "MaxBoxAccV2"),
        ("cam-mmd", "one-stage", "Top-1 Loc"),
        ("cam-mmd", "two-stage", "Top-1 Loc"),
        ("cam-none", "wsolevaluation", "MaxBoxAccV2"),
    ]
    seeds = [CELLS[0], CELLS[1]]
    mean_v2 = sum(cell_value(c, "MaxBoxAccV2") for c in seeds) / 2
    row = table.iloc[0]
    assert row["reproduced"] == pytest.approx(mean_v2) and row["seeds"] == 2
    assert row["delta"] == pytest.approx(mean_v2 - 69.87)
    assert table.iloc[2]["reproduced"] == 70.0 and table.iloc[2]["seeds"] == 1
    assert table.iloc[2]["delta"] == pytest.approx(70.0 - 66.65)
    assert table.iloc[3]["reproduced"] == pytest.approx(cell_value(CELLS[2], "MaxBoxAccV2"))


def test_a_missing_reproduced_metric_is_an_empty_delta(results):
    path = results / "results/cells/cub/resnet50/cam-mmd/seed4/metrics.json"
    data = json.loads(path.read_text())
    del data["splits"]["test"]["Top-1 Loc (two-stage)"]
    path.write_text(json.dumps(data))
    table = compare(load_reported(results / "reported.csv"), reproduced_values(CELLS, results / "results/cells"))
    two_stage = table[table["variant"] == "two-stage"].iloc[0]
    assert pd.isna(two_stage["reproduced"]) and pd.isna(two_stage["delta"])


def test_write_comparison_renders_csv_markdown_latex(results):
    paths = write_comparison(CELLS, results / "results/cells", results / "tables", results / "reported.csv")
    assert [p.name for p in paths] == [f"reported_vs_reproduced.{e}" for e in ("tex", "csv", "md")]
    csv = pd.read_csv(results / "tables/reported_vs_reproduced.csv")
    assert len(csv) == 4 and {"reported", "reproduced", "delta", "source"} <= set(csv.columns)
    md = (results / "tables/reported_vs_reproduced.md").read_text()
    mean_v2 = sum(cell_value(c, "MaxBoxAccV2") for c in CELLS[:2]) / 2
    assert (
        "| CUB-200-2011 | ResNet50 | CAM + DA-WSOL-MMD | one-stage | MaxBoxAccV2 | "
        f"69.87 | {mean_v2:.2f} | {mean_v2 - 69.87:+.2f} |" in md
    )
    tex = (results / "tables/reported_vs_reproduced.tex").read_text()
    assert "\\begin{table*}" in tex and "\\toprule" in tex and "66.65" in tex


def test_project_reference_file_loads_and_has_sources():
    reported = load_reported(PROJECT_ROOT / "results/reference/reported.csv")
    assert len(reported) > 100 and reported["source"].notna().all()


def test_no_reported_file_gives_an_empty_table(tmp_path):
    paths = write_comparison(CELLS, tmp_path / "none", tmp_path / "tables", tmp_path / "missing.csv")
    assert all(p.is_file() for p in paths)
    assert pd.read_csv(paths[1]).empty
