"""The MLflow UI as the results browser, in headless Chromium (fresh profile, offline), along the README's path:
`dawsol tracking ui` prints three URLs: the training runs, the results view (a summary run per method, best first,
its seed means as columns) and the newest grid run's `tables/<dataset>.json` shown as a table.

The store is a small one built here without training: the default grid's cells with known results (as
`dawsol evaluate` writes them), their runs as `dawsol train` makes them, and a real `dawsol report`.
Screenshots stay in the test's temporary folder when it fails (pyproject.toml's tmp_path_retention_policy);
``DAWSOL_SCREENSHOTS=<folder>`` keeps a copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_fixtures import Browser, chromium_or_skip
from workflow_fixtures import BIN, write_cell, write_dataset

from dawsol import tracking
from dawsol.cli import main
from dawsol.config import grid_cells, load_params, resolve

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MEANS = {"cam-mmd": "52.5", "cam-dann": "47.5", "cam-none": "42.5"}  # MaxBoxAccV2: workflow_fixtures.cell_value

# the text of each runs-table row (its parts are split over ag-grid's pinned and scrolled containers) with the
# value of the column whose header is the argument, in the order shown
ROWS_WITH = """
(header => {
  const head = Array.from(document.querySelectorAll('.ag-header-cell')).find(h => h.innerText.trim() === header);
  if (!head) return null;
  const rows = {};
  for (const part of document.querySelectorAll('.ag-row')) {
    const row = rows[part.getAttribute('row-index')] ??= {text: '', value: null};
    row.text += part.innerText + ' ';
    const cell = part.querySelector(`[col-id="${head.getAttribute('col-id')}"]`);
    if (cell) row.value = cell.innerText.trim();
  }
  return Object.keys(rows).sort((a, b) => a - b).map(k => [rows[k].text, rows[k].value]);
})
"""
# the centre of the artifact tree's node named as the argument, if shown
ARTIFACT_NODE = """
(name => {
  const node = document.querySelector(`[data-testid=artifact-tree-node][artifact-name="${name}"]`);
  if (!node) return null;
  const box = node.getBoundingClientRect();
  return [box.x + box.width / 2, box.y + box.height / 2];
})
"""


@pytest.fixture
def results_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    chromium_or_skip()
    project = tmp_path / "project"
    (project / "results").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "params.yaml", project / "params.yaml")
    shutil.copytree(PROJECT_ROOT / "results" / "reference", project / "results" / "reference")
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    params = load_params(project / "params.yaml")
    write_dataset(project / "data" / "synthetic")
    for cell in grid_cells(params, project / "params.yaml"):
        write_cell(project, cell)
        run = tracking.CellRun.start(resolve(cell, params, project / "params.yaml"))
        data = json.loads((project / "results" / "cells" / cell.name / "metrics.json").read_text())
        for split in ("val", "test"):
            run.log_metrics(data["splits"][split], prefix=f"{split}.final.")
        run.finish()
    assert main(["report"]) == 0
    return project


@pytest.fixture
def ui_urls(results_store: Path, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """`dawsol tracking ui` on the store: the three URLs it prints, once the server answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(PROJECT_ROOT)}
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(BIN / "dawsol"), "tracking", "ui", "--port", str(port)],
            cwd=results_store,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while "Uvicorn running" not in log.read_text() and "Application startup complete" not in log.read_text():
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"mlflow ui did not start:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        urls = re.findall(r"http://\S+/#/\S+", log.read_text())  # dawsol's lines, not the server's
        assert len(urls) == 3, log.read_text()[:2000]
        assert all(url.startswith(f"http://127.0.0.1:{port}/#/experiments/") for url in urls)
        yield urls[0], urls[1], urls[2]
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    opened = Browser(chromium_or_skip(), tmp_path / "chromium-profile", width=1800, height=1000)  # no local storage
    yield opened
    opened.close()


@pytest.mark.browser
def test_from_dawsol_tracking_ui_to_the_results_table(
    ui_urls: tuple[str, str, str], browser: Browser, tmp_path: Path
) -> None:
    try:
        shots = _follow_the_readme(browser, *ui_urls, tmp_path)
    except BaseException:
        browser.screenshot(tmp_path / "mlflow_failed.png", full_page=False)  # what the page showed then
        raise
    assert browser.external_requests() == []
    keep = os.environ.get("DAWSOL_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, Path(keep) / shot.name)


def _follow_the_readme(browser: Browser, runs_url: str, results_url: str, table_url: str, tmp_path: Path) -> list[Path]:
    """The README's three steps, `dawsol tracking ui`'s URLs in turn; the screenshots of each."""
    shots = []

    # 1. the first URL: the experiment's training runs (not GenAI's traces), the grid run on top
    browser.open(runs_url)
    grid = browser.wait_for(
        "Array.from(document.querySelectorAll('a')).map(a => a.innerText.trim()).find(t => t.startsWith('grid '))",
        what="the grid run in the runs table",
    )
    text = browser.text()
    assert "matching runs" in text and "No data available" not in text
    assert "Observability" not in text and "Evaluation runs" not in text  # the GenAI side bar's entries
    assert "workflowType=machine_learning" in browser.evaluate("location.hash")
    shots.append(browser.screenshot(tmp_path / "mlflow_1_runs.png", full_page=False))

    # 2. the third URL: the grid run's tables/synthetic.json as a table (MLflow's table viewer), training mode
    browser.open(table_url)
    table = browser.wait_for(
        "(() => { const t = Array.from(document.querySelectorAll('[role=table]')).find(t => t.innerText.includes"
        "('seeds')); return t && Array.from(t.querySelectorAll('[role=row]')).map(r => r.innerText); })()",
        what="tables/synthetic.json as a table",
    )
    assert len(table) == 1 + 5 and any("cam-mmd" in row for row in table)  # the header, 3 methods, 2 baselines
    assert browser.evaluate(f"{ARTIFACT_NODE}('reported_vs_reproduced.json')")  # beside it in the tree
    assert grid in browser.text() and "Observability" not in browser.text()
    shots.append(browser.screenshot(tmp_path / "mlflow_2_results_table.png", full_page=False))

    # 3. the second URL: one summary run per method, best MaxBoxAccV2 mean first, the means as a column
    browser.open(results_url)
    rows = browser.wait_for(
        f"(rows => rows && rows.length === 3 && rows.every(r => r[1]) && rows)({ROWS_WITH}('test.MaxBoxAccV2.mean'))",
        what="the three summary runs with their MaxBoxAccV2 means",
    )
    names = [next(m for m in MEANS if f"{m}/mean · synthetic/efficientnet_lite0" in row) for row, _ in rows]
    assert list(zip(names, [value for _, value in rows], strict=True)) == list(MEANS.items())
    assert "3 matching runs" in browser.text()
    shots.append(browser.screenshot(tmp_path / "mlflow_3_results_view.png", full_page=False))
    return shots
