"""The code version in checkpoints, metrics.json and MLflow, and the report's warning on mixed versions."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from workflow_fixtures import CODE, write_cell, write_dataset

from dawsol.cli import main
from dawsol.config import grid_cells, load_params
from dawsol.provenance import code_version, describe
from dawsol.tracking import code_tags

PROJECT = Path(__file__).resolve().parent.parent


def test_code_version_is_this_checkout():
    code = code_version()
    head = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert code["git_commit"] == head.stdout.strip()
    assert isinstance(code["git_dirty"], bool) and len(code["library"]) == 12
    assert code["dawsol"]


def test_describe_and_tags():
    assert describe(CODE) == "0.1.0 @ aaaaaaaaaaaa"  # recorded before the library hash
    assert describe({**CODE, "git_dirty": True}) == "0.1.0 @ aaaaaaaaaaaa+dirty"
    assert describe({**CODE, "library": "c" * 12}) == describe({**CODE, "git_commit": "d" * 40, "library": "c" * 12})
    assert describe(None) == "unknown"
    assert code_tags(CODE, "evaluated_") == {
        "evaluated_dawsol_version": "0.1.0",
        "evaluated_git_commit": "a" * 40,
        "evaluated_library": "unknown",
        "evaluated_git_dirty": "false",
    }


@pytest.mark.slow  # two whole reports of the default grid, figures included
def test_report_warns_about_a_table_of_mixed_code_versions(tmp_path, params_copy, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "data" / "synthetic")
    cells = grid_cells(load_params(params_copy), params_copy)
    for cell in cells:
        write_cell(tmp_path, cell)
    assert main(["report", "--no-tracking"]) == 0
    assert "code versions" not in (tmp_path / "results/tables/synthetic.md").read_text()

    write_cell(tmp_path, cells[0], code={**CODE, "git_commit": "b" * 40})
    with caplog.at_level(logging.WARNING, logger="dawsol.report"):
        assert main(["report", "--no-tracking"]) == 0
    md = (tmp_path / "results/tables/synthetic.md").read_text()
    assert "2 code versions (0.1.0 @ aaaaaaaaaaaa; 0.1.0 @ bbbbbbbbbbbb)" in md
    assert "mixes cells of 2 code versions" in caplog.text
