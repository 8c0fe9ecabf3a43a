"""The post-hoc table: every extractor x method of a dataset's cells, mean +- std over seeds, time per image."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dawsol.config import parse_cell
from dawsol.errors import DawsolError
from dawsol.layout import timing_path
from dawsol.report.posthoc import posthoc_frame, write_posthoc_tables


def _write_cell(cells_dir: Path, name: str, box: float, extra: dict[str, float]) -> None:
    def splits(value: float) -> dict:
        metrics = {"MaxBoxAccV2": value, "PxAP": value + 1, "pIoU": value + 2}
        return {"val": metrics, "test": metrics}

    document = {"splits": splits(box), "extractors": {m: {"splits": splits(v)} for m, v in extra.items()}}
    path = cells_dir / name / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(document))
    seconds = {"cam": {"val": 0.01, "test": 0.01}, **{m: {"val": 0.5, "test": 0.5} for m in extra}}
    timing = timing_path(name, cells_dir)  # a measurement: beside the cells, not in metrics.json
    timing.parent.mkdir(parents=True, exist_ok=True)
    timing.write_text(json.dumps({"cell": name, "seconds_per_image": seconds}))


def test_the_table_has_a_row_per_extractor_and_a_column_group_per_method(tmp_path):
    names = [
        "synthetic/resnet18/cam-none/seed0",
        "synthetic/resnet18/cam-none/seed1",
        "synthetic/resnet18/cam-mmd/seed0",
        "synthetic/resnet18/cam-mmd/seed1",
    ]
    for i, name in enumerate(names):
        _write_cell(tmp_path / "cells", name, 50.0 + i, {"scorecam": 60.0 + i, "hirescam": 40.0})
    frame = posthoc_frame([parse_cell(n) for n in names], tmp_path / "cells")
    md, csv = write_posthoc_tables(frame, "synthetic", tmp_path / "tables")
    assert md.name == "synthetic_posthoc.md" and csv.name == "synthetic_posthoc.csv"
    lines = md.read_text().splitlines()
    assert lines[0] == (
        "| Extractor | CAM: MaxBoxAccV2 | CAM: PxAP | CAM: pIoU | CAM + DA-WSOL-MMD: MaxBoxAccV2 | "
        "CAM + DA-WSOL-MMD: PxAP | CAM + DA-WSOL-MMD: pIoU | s / image |"
    )
    assert lines[2].startswith("| CAM | 50.5 ± 0.7 | 51.5 ± 0.7 | 52.5 ± 0.7 | 52.5 ± 0.7 |")
    assert lines[2].endswith("| 0.0100 |")
    assert lines[3].startswith("| ScoreCAM | **60.5 ± 0.7** |") and lines[3].endswith("| 0.5000 |")
    assert lines[4].startswith("| HiResCAM | 40.0 ± 0.0 |")
    numbers = pd.read_csv(csv)
    row = numbers[(numbers["extractor"] == "scorecam") & (numbers["method"] == "cam-mmd")].iloc[0]
    assert row["seeds"] == 2 and row["MaxBoxAccV2_mean"] == pytest.approx(62.5)


def test_a_missing_metrics_file_names_the_cell(tmp_path):
    with pytest.raises(DawsolError, match=r"metrics.json: missing \(run `dawsol evaluate synthetic/resnet18"):
        posthoc_frame([parse_cell("synthetic/resnet18/cam-none/seed0")], tmp_path)
