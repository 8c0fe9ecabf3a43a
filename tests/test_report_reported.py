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
cub,-,cam-none,wsolevaluation,MaxBoxAccV2,61.1,wsolevaluation
cub,resnet50,center-none,wsolevaluation,MaxBoxAccV2,59.7,wsolevaluation
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
    # acol and the center baseline (no cell), the CUB mean (backbone -) and ilsvrc (not in the grid) are left out
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
    assert [p.name for p in paths] == [f"reported_vs_reproduced.{e}" for e in ("tex", "csv", "md", "html")]
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
    html = (results / "tables/reported_vs_reproduced.html").read_text()  # the Snakemake report's view
    assert '<meta charset="utf-8">' in html and "Reported vs reproduced" in html
    assert f"<td>69.87</td>\n      <td>{mean_v2:.2f}</td>\n      <td>{mean_v2 - 69.87:+.2f}</td>" in html


# The published numbers that results/reference/reported.csv transcribes, as tables under their sources' headings
# (2.1: the official DA-WSOL README, 2.2: the BagCAMs README, 2.3: a third-party list, 2.4: Choe et al.'s
# wsolevaluation table, its method rows as deltas to CAM); the tests below hold the CSV to every number here.
SPEC_SECTION_2 = """
### 2.1 [README] Official README "Performance" (scores of the released checkpoints; *not* the paper)
**ILSVRC**
| | Top-1 Loc | GT-known Loc | MaxBoxAccV2 |
|:--|:--:|:--:|:--:|
| DA-WSOL-ResNet-One-Stage | 43.26 | 70.27 | 68.23 |
| DA-WSOL-ResNet-Two-Stage | 55.84 | 70.27 | 68.23 |
| DA-WSOL-InceptionV3-Two-Stage | 52.70 | 69.11 | 64.75 |
**CUB-200**
| | Top-1 Loc | GT-known Loc | MaxBoxAccV2 | pIoU | PxAP |
|:--|:--:|:--:|:--:|:--:|:--:|
| DA-WSOL-ResNet-One-Stage | 62.40 | 81.83 | 69.87 | 56.18 | 74.70 |
| DA-WSOL-ResNet-Two-Stage | 66.65 | 81.83 | 69.87 | 56.18 | 74.70 |
| DA-WSOL-InceptionV3-Two-Stage | 65.94 | 80.03 | 68.01 | 51.81 | 71.03 |
**OpenImages**
| | pIoU | PxAP |
|:--|:--:|:--:|
| DA-WSOL-ResNet | 49.68 | 65.42 |
| DA-WSOL-InceptionV3 | 48.01 | 64.46 |
### 2.2 [BagCAMs] DA-WSOL rows in the BagCAMs README (same checkpoints; "CAM" = plain CAM maps)
| Dataset | Row | Top-1 Loc | GT-known Loc | MaxBoxAccV2 | pIoU | PxAP |
|:--|:--|:--:|:--:|:--:|:--:|:--:|
| ILSVRC | DA-WSOL-ResNet-CAM | 43.26 | 70.27 | 68.23 | – | – |
| ILSVRC | DA-WSOL-ResNet-BagCAMs | 44.24 | 72.08 | 69.97 | – | – |
| ILSVRC | DA-WSOL-InceptionV3 | 52.70 | 69.11 | 64.75 | – | – |
| ILSVRC | DA-WSOL-InceptionV3-BagCAMs | 53.87 | 71.02 | 66.93 | – | – |
| CUB | DA-WSOL-ResNet-CAM | 62.40 | 81.83 | 69.87 | 56.18 | 74.70 |
| CUB | DA-WSOL-ResNet-BagCAMs | 69.67 | 94.01 | 84.88 | 74.51 | 90.38 |
| CUB | DA-WSOL-InceptionV3-CAM | 56.29 | 80.03 | 68.01 | 51.81 | 71.03 |
| CUB | DA-WSOL-InceptionV3-BagCAMs | 60.07 | 89.78 | 76.94 | 58.05 | 72.97 |
| OpenImages | DA-WSOL-ResNet-CAM | – | – | – | 49.68 | 65.42 |
| OpenImages | DA-WSOL-ResNet-BagCAMs | – | – | – | 52.17 | 67.68 |
| OpenImages | DA-WSOL-InceptionV3-CAM | – | – | – | 48.01 | 64.46 |
| OpenImages | DA-WSOL-InceptionV3-BagCAMs | – | – | – | 50.79 | 66.89 |
### 2.3 [3rd] Third-party transcription (probably the paper's numbers; unverified)
| Dataset | Top-1 Loc | GT-known |
|:--|:--:|:--:|
| CUB-200-2011 | 66.8 | 82.3 |
| ImageNet | 54.9 | 70.2 |
### 2.4 [WSOLEVAL] Reference baselines under the same protocol (Choe et al., test split, last checkpoint)
| Method | IN VGG | IN Inc | IN Res | IN Mean | CUB VGG | CUB Inc | CUB Res | CUB Mean | OI VGG | OI Inc | OI Res | OI Mean | Total |
|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|
| CAM | 60.0 | 63.4 | 63.7 | 62.4 | 63.7 | 56.7 | 63.0 | 61.1 | 58.3 | 63.2 | 58.5 | 60.0 | 61.2 |
| HaS | +0.6 | +0.3 | −0.3 | +0.2 | +0.0 | −3.3 | +1.7 | −0.5 | −0.2 | −5.1 | −2.6 | −2.6 | −1.0 |
| ACoL | −2.6 | +0.3 | −1.4 | −1.2 | −6.3 | −0.5 | 3.5 | −1.1 | −4.0 | −6.0 | −1.2 | −3.7 | −2.0 |
| SPG | −0.1 | −0.1 | −0.4 | −0.2 | −7.4 | −0.8 | −2.6 | −3.6 | +0.0 | −0.9 | −1.8 | −0.9 | −1.6 |
| ADL | −0.2 | −2.0 | +0.0 | −0.7 | +2.6 | +2.1 | −4.6 | +0.0 | +0.4 | −6.4 | −3.3 | −3.1 | −1.3 |
| CutMix | −0.6 | +0.5 | −0.4 | −0.2 | −1.4 | +0.8 | −0.2 | −0.3 | −0.2 | −0.7 | −0.8 | −0.6 | −0.3 |
| Best WSOL | 60.6 | 63.9 | 63.7 | 62.6 | 66.3 | 58.8 | 66.4 | 61.1 | 58.7 | 63.2 | 58.5 | 60.0 | 61.2 |
| FSL baseline | 60.3 | 65.3 | 66.3 | 64.0 | 71.6 | 86.6 | 82.4 | 80.2 | 65.9 | 74.1 | 74.4 | 71.5 | 71.9 |
| Center baseline | 52.5 | 52.5 | 52.5 | 52.5 | 59.7 | 59.7 | 59.7 | 59.7 | 45.8 | 45.8 | 45.8 | 45.8 | 52.3 |
"""  # noqa: E501
SOURCES = {  # the CSV's source, by its start, to the spec's subsection
    "DA-WSOL README": "2.1",
    "BagCAMs README": "2.2",
    "third-party list": "2.3",
    "wsolevaluation": "2.4",
}
DATASETS = {
    "ILSVRC": "ilsvrc", "ImageNet": "ilsvrc", "IN": "ilsvrc",
    "CUB-200": "cub", "CUB": "cub", "CUB-200-2011": "cub",
    "OpenImages": "openimages", "OI": "openimages",
}  # fmt: skip
BACKBONES = {"VGG": "vgg16", "Inc": "inception_v3", "Res": "resnet50", "Mean": "-"}
WSOLEVAL_METHODS = {
    "CAM": "cam", "HaS": "has", "ACoL": "acol", "SPG": "spg", "ADL": "adl", "CutMix": "cutmix",
    "Best WSOL": "best_wsol", "FSL baseline": "fsl", "Center baseline": "center",
}  # fmt: skip
DELTA_ROWS = {"HaS", "ACoL", "SPG", "ADL", "CutMix"}  # given as deltas to CAM


def _table_rows(text: str):
    """(subsection, bold heading, header, cells) of every data row of the markdown tables in ``text``."""
    section = heading = header = None
    for line in text.splitlines():
        if line.startswith("### "):
            section = line.split()[1]
        elif line.startswith("**"):
            heading = line.strip("*")
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
        elif not line.startswith("|:"):
            yield section, heading, header, cells


def _dawsol_row(name: str) -> tuple[str, str]:
    """The backbone and variant of a README row such as ``DA-WSOL-InceptionV3-Two-Stage``."""
    backbone = "inception_v3" if name.startswith("DA-WSOL-InceptionV3") else "resnet50"
    return backbone, "two-stage" if name.endswith("Two-Stage") else "one-stage"


def _spec_numbers(text: str) -> list[tuple[str, tuple]]:
    """Every number of the section's tables as (subsection, reported.csv key and value)."""
    numbers = []
    cam: dict[str, float] = {}  # CAM's row of 2.4, by column
    for section, heading, header, cells in _table_rows(text):
        for column, cell in zip(header[1:], cells[1:], strict=True):
            if cell == "–" or column == "Row":
                continue
            value = float(cell.replace("−", "-"))
            if section == "2.1":
                key = (DATASETS[heading], *_dawsol_row(cells[0]), "cam-mmd", column)
            elif section == "2.2":
                backbone = _dawsol_row(cells[1])[0]
                variant = "bagcams" if cells[1].endswith("-BagCAMs") else "bagcams-cam"
                key = (DATASETS[cells[0]], backbone, variant, "cam-mmd", column)
            elif section == "2.3":
                metric = "GT-known Loc" if column == "GT-known" else column
                key = (DATASETS[cells[0]], "resnet50", "paper-3rd-party", "cam-mmd", metric)
            else:
                dataset, backbone = column.split() if column != "Total" else ("-", "Mean")
                metric = {"OI": "PxAP", "-": "MaxBoxAccV2/PxAP"}.get(dataset, "MaxBoxAccV2")
                if cells[0] == "CAM":
                    cam[column] = value
                if cells[0] in DELTA_ROWS:
                    value = round(cam[column] + value, 1)
                method = f"{WSOLEVAL_METHODS[cells[0]]}-none"
                key = (DATASETS.get(dataset, "-"), BACKBONES[backbone], "wsolevaluation", method, metric)
            dataset, backbone, variant, method, metric = key
            numbers.append((section, (dataset, backbone, method, variant, metric, round(value, 2))))
    return numbers


def test_project_reference_file_holds_every_number_of_the_spec():
    reported = load_reported(PROJECT_ROOT / "results/reference/reported.csv")
    sections = [next(s for prefix, s in SOURCES.items() if source.startswith(prefix)) for source in reported["source"]]
    keys = zip(*(reported[c] for c in ("dataset", "backbone", "method", "variant", "metric")), strict=True)
    ours = [(s, (*k, round(v, 2))) for s, k, v in zip(sections, keys, reported["value"], strict=True)]
    expected = _spec_numbers(SPEC_SECTION_2)
    assert sorted(ours) == sorted(expected)
    assert pd.Series(sections).value_counts().to_dict() == {"2.1": 28, "2.2": 40, "2.3": 4, "2.4": 117}
    # a few values by hand: deltas become CAM + delta, means and totals have backbone (and dataset) -
    assert ("2.4", ("cub", "resnet50", "acol-none", "wsolevaluation", "MaxBoxAccV2", 66.5)) in ours
    assert ("2.4", ("openimages", "-", "has-none", "wsolevaluation", "PxAP", 57.4)) in ours
    assert ("2.4", ("-", "-", "center-none", "wsolevaluation", "MaxBoxAccV2/PxAP", 52.3)) in ours


def test_the_wsolevaluation_table_adds_up():
    """Each Mean of 2.4 is the mean of its three backbones and Total the mean of the three Means, up to the
    table's rounding: a mistyped number would break it. Published exceptions: Best WSOL is the best method per
    column (its Mean, not the mean of its column bests) and the centre baseline's Total is 52.3 as printed."""
    checked = 0
    for section, _, header, cells in _table_rows(SPEC_SECTION_2):
        if section != "2.4" or cells[0] == "Best WSOL":
            continue
        value = dict(zip(header[1:], (float(c.replace("−", "-")) for c in cells[1:]), strict=True))
        for dataset in ("IN", "CUB", "OI"):
            mean = sum(value[f"{dataset} {backbone}"] for backbone in ("VGG", "Inc", "Res")) / 3
            assert mean == pytest.approx(value[f"{dataset} Mean"], abs=0.1), (cells[0], dataset)
            checked += 1
        total = sum(value[f"{dataset} Mean"] for dataset in ("IN", "CUB", "OI")) / 3
        assert total == pytest.approx(value["Total"], abs=0.1) or cells[0] == "Center baseline", cells[0]
    assert checked == 8 * 3


def test_project_reference_file_builds_the_table(tmp_path):
    for cell in CELLS:
        write_cell(tmp_path, cell)
    reported = load_reported(PROJECT_ROOT / "results/reference/reported.csv")
    table = compare(reported, reproduced_values(CELLS, tmp_path / "results/cells"))
    assert set(zip(table["dataset"], table["backbone"], strict=True)) == {("cub", "resnet50")}
    # cam-mmd: one-stage, two-stage, bagcams-cam, bagcams (5 metrics each) and the 3rd-party 2; cam-none: 1
    assert table["method"].value_counts().to_dict() == {"cam-mmd": 22, "cam-none": 1}
    # every metric has a reproduced value but the two-stage Top-1 Loc (no `dawsol evaluate --predictions`) and
    # the BagCAMs rows: these cells have no BagCAMs maps (eval.cam_methods; tests/test_posthoc_evaluate.py fills them)
    empty = table[table["reproduced"].isna()][["variant", "metric"]].values.tolist()
    assert ["two-stage", "Top-1 Loc"] in empty and {v for v, _ in empty} == {"two-stage", "bagcams"}
    assert len(empty) == 1 + 5


def test_no_reported_file_gives_an_empty_table(tmp_path):
    paths = write_comparison(CELLS, tmp_path / "none", tmp_path / "tables", tmp_path / "missing.csv")
    assert all(p.is_file() for p in paths)
    assert pd.read_csv(paths[1]).empty
