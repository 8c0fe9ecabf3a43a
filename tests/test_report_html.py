"""The HTML table declares its encoding where a browser looks for it (it showed "mean Â± std" without)."""

from __future__ import annotations

from pathlib import Path

from dawsol.config import grid_cells, load_params
from dawsol.report.tables import aggregate, load_metrics, to_html

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_the_html_table_says_utf_8_before_any_text() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")
    frame = load_metrics(grid_cells(params), PROJECT_ROOT / "results" / "cells")  # the committed default run
    page = to_html(aggregate(frame, "synthetic")).encode("utf-8")
    declared = page.find(b'<meta charset="utf-8">')
    assert 0 <= declared < page.find(b"<body>") and declared < 1024  # browsers read the first 1024 bytes for it
    assert "±".encode() in page
