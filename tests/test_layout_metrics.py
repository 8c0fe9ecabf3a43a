"""Reading a cell's metrics.json through dawsol.layout: its maps per split, one-line errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dawsol.config import parse_cell
from dawsol.errors import DawsolError
from dawsol.layout import CELLS_DIR, OWN_MAPS, evaluate_outputs, read_cell_metrics

CELL = parse_cell("synthetic/resnet18/cam-mmd/seed3")


def _write(cells_dir: Path, document: object) -> Path:
    path = evaluate_outputs(CELL, cells_dir)["metrics"]
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(document))
    return path


def test_the_split_of_the_own_maps_and_each_extractor_in_order(tmp_path: Path):
    document = {
        "settings_digest": "abc",
        "splits": {"val": {"PxAP": 1.0}, "test": {"PxAP": 2.0}},
        "extractors": {"bagcams": {"splits": {"val": {"PxAP": 3.0}, "test": {"PxAP": 4.0}}}},
    }
    _write(tmp_path, document)
    found = read_cell_metrics(CELL, "test", tmp_path)
    assert found.document == document
    assert list(found.maps.items()) == [(OWN_MAPS, {"PxAP": 2.0}), ("bagcams", {"PxAP": 4.0})]
    assert read_cell_metrics(CELL, "val", tmp_path).maps == {OWN_MAPS: {"PxAP": 1.0}, "bagcams": {"PxAP": 3.0}}


def test_the_path_is_the_layouts():
    assert evaluate_outputs(CELL)["metrics"] == CELLS_DIR / CELL.name / "metrics.json"


def test_a_missing_file_names_the_command_that_writes_it(tmp_path: Path):
    with pytest.raises(DawsolError, match=r"metrics\.json: missing \(run `dawsol evaluate synthetic/resnet18/cam-mmd"):
        read_cell_metrics(CELL, "test", tmp_path)


@pytest.mark.parametrize(
    "document",
    [
        {"splits": {"val": {}}},  # no test split
        {"splits": {"test": [1, 2]}},  # not an object
        {"splits": {"test": {}}, "extractors": {"gradcam": {"splits": {"val": {}}}}},  # an extractor without it
        {"splits": {"test": {}}, "extractors": {"gradcam": None}},
        ["not", "a", "document"],
    ],
)
def test_a_document_without_the_split_is_one_line_naming_file_and_command(tmp_path: Path, document: object):
    path = _write(tmp_path, document)
    with pytest.raises(DawsolError) as caught:
        read_cell_metrics(CELL, "test", tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a cell metrics.json with test metrics") and "\n" not in message
    assert message.endswith(f"re-run `dawsol evaluate {CELL.name}`")


def test_a_broken_file_is_one_line(tmp_path: Path):
    path = _write(tmp_path, {})
    path.write_text("{not json")
    with pytest.raises(DawsolError, match=r"not a cell metrics\.json with val metrics"):
        read_cell_metrics(CELL, "val", tmp_path)
