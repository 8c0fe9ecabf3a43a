"""The three front doors in a real browser (headless Chromium, offline) after a tiny default-like run (slow).

What a user opens: the MLflow UI (`dawsol tracking ui`), the Snakemake report (`snakemake --report`)
and DVC's plots page (`dvc plots show`). Chromium resolves no host but 127.0.0.1 and uses no proxy,
so a page that needs the internet shows it here. Screenshots are kept in each test's temporary
folder (kept when the test fails: pyproject.toml's tmp_path_retention_policy).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_fixtures import Browser, chromium_or_skip
from test_workflow_e2e import TINY_CELLS, make_tiny
from workflow_fixtures import BIN, copy_project, run_tool

pytestmark = pytest.mark.browser

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# a Vega plot is drawn: its canvas has a pixel that is not transparent
DRAWN_VEGA_PLOTS = """
Array.from(document.querySelectorAll('.vega-embed canvas')).filter(canvas => {
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] > 0) return true; }
  return false;
}).length
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default grid shrunk to two cells, run by Snakemake end to end, with its HTML report."""
    chromium_or_skip()  # before minutes of training
    project = copy_project(PROJECT_ROOT, tmp_path_factory.mktemp("browser") / "project")
    make_tiny(project)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)  # DVC's repository
    run_tool(["dawsol", "dvc-yaml"], project)
    run_tool(["snakemake", "--cores", "2"], project, timeout=900)
    run_tool(["snakemake", "--report", "results/report.html"], project)
    return project


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    opened = Browser(chromium_or_skip(), tmp_path / "chromium-profile")
    yield opened
    opened.close()


def test_dvc_plots_page_draws_its_vega_plots_offline(tiny_run: Path, browser: Browser, tmp_path: Path) -> None:
    run_tool(["dvc", "plots", "show"], tiny_run)
    page = tiny_run / "dvc_plots" / "index.html"
    browser.open(page.as_uri())
    # dvc.yaml's top-level plots: BoxAcc vs threshold and precision vs recall of the one dataset
    assert browser.wait_for(f"({DRAWN_VEGA_PLOTS}) >= 2", what="two drawn Vega plots")
    assert browser.evaluate("document.querySelectorAll('.vega-embed').length") == 2
    assert browser.wait_for("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length") == 4
    browser.screenshot(tmp_path / "dvc_plots.png")
    assert browser.external_requests() == []


def test_snakemake_report_shows_the_tables_and_figures(tiny_run: Path, browser: Browser, tmp_path: Path) -> None:
    browser.open((tiny_run / "results" / "report.html").as_uri())
    browser.wait_for("document.body && document.body.innerText.includes('Tables')", what="the report's menu")
    results = browser.evaluate(REPORT_RESULTS)
    assert {"synthetic.html", "reported_vs_reproduced.html"} <= set(results)
    assert {f"synthetic_{kind}.png" for kind in ("cams", "boxacc", "pxpr", "training")} <= set(results)
    assert "Reported vs reproduced" in results["reported_vs_reproduced.html"]["text"]
    assert "published number" in results["reported_vs_reproduced.html"]["caption"]  # workflow/report/reported.rst
    # as a reader gets there: Tables -> reported_vs_reproduced -> its eye button shows the table (a category
    # with one subcategory, here Figures with the one dataset, lists its files at once)
    for steps, path, shown in (
        (("Tables", "reported_vs_reproduced"), "results/tables/reported_vs_reproduced.html", "iframe"),
        (("Tables", "synthetic"), "results/tables/synthetic.html", "iframe"),
        (("Figures",), "results/figures/synthetic_cams.png", "img"),
    ):
        browser.open((tiny_run / "results" / "report.html").as_uri())
        for step in steps:
            browser.wait_for(f"{CLICK}({step!r})", what=f"the menu entry {step!r}")
        browser.wait_for(f"{CLICK_VIEW}({path!r})", what=f"{path}'s row")
        shown_src = f"Array.from(document.querySelectorAll('{shown}')).map(e => e.src).find(s => s.startsWith('data:'))"
        assert browser.wait_for(shown_src, what=f"{path} shown")
        browser.screenshot(tmp_path / f"snakemake_report_{Path(path).stem}.png")
    assert browser.external_requests() == []


def test_mlflow_ui_lists_the_runs_and_their_cells(tiny_run: Path, browser: Browser, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dawsol")
    runs = client.search_runs([experiment.experiment_id])
    assert {run.data.tags.get("dawsol.cell") for run in runs} >= set(TINY_CELLS)
    parents = {run.data.tags.get("mlflow.parentRunId") for run in runs} - {None}
    top = [run.info.run_name for run in runs if "mlflow.parentRunId" not in run.data.tags]
    nested = [run.info.run_name for run in runs if "mlflow.parentRunId" in run.data.tags]
    expand = [run.info.run_name for run in runs if run.info.run_id in parents]
    port = _free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tiny_run / 'mlflow.db'}"
    with (tmp_path / "ui.log").open("w") as log:
        server = subprocess.Popen(
            [str(BIN / "dawsol"), "tracking", "ui", "--port", str(port)], cwd=tiny_run, env=env, stdout=log, stderr=log
        )
    try:
        _wait_for_http(f"http://127.0.0.1:{port}/health", server, tmp_path / "ui.log")
        browser.open(f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs")
        for name in top:
            browser.wait_for(f"document.body && document.body.innerText.includes({name!r})", what=f"run {name!r}")
        for name in expand:  # a parent run (the grid's) shows its children once its row is expanded
            browser.wait_for(f"{EXPAND_ROW}({name!r})", what=f"the expand button of {name!r}")
        for name in nested:
            browser.wait_for(f"document.body.innerText.includes({name!r})", what=f"nested run {name!r}")
        browser.screenshot(tmp_path / "mlflow_ui.png")
        assert browser.external_requests() == []
    finally:
        server.terminate()
        server.wait(timeout=30)


# click the link or button whose text is the argument (the report's menu entries)
CLICK = "(text => { const e = Array.from(document.querySelectorAll('a, button'))"
CLICK += ".find(e => e.innerText.trim() === text); if (e) e.click(); return Boolean(e); })"
# click the view button of the result row whose text is the argument
CLICK_VIEW = "(text => { const row = Array.from(document.querySelectorAll('tr')).find(r => r.innerText.includes(text));"
CLICK_VIEW += " const e = row && row.querySelector('a'); if (e) e.click(); return Boolean(e); })"

# click the first button (the tree's expander) of the MLflow runs-table row whose text has the argument
EXPAND_ROW = "(name => { const row = Array.from(document.querySelectorAll('[role=row]'))"
EXPAND_ROW += ".find(r => r.innerText.includes(name)); const e = row && row.querySelector('button');"
EXPAND_ROW += " if (e) e.click(); return Boolean(e); })"

# every result of the Snakemake report (its `results` object): file name -> caption and, for HTML, the page's text
REPORT_RESULTS = """
Object.fromEntries(Object.entries(results).map(([path, entry]) => {
  let text = "";
  if (entry.mime_type === "text/html") {
    const bytes = Uint8Array.from(atob(entry.data_uri.split(",")[1]), c => c.charCodeAt(0));
    text = new TextDecoder().decode(bytes);
  }
  return [path.split("/").pop(), {caption: entry.caption, text: text}];
}))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_http(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the MLflow UI exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the MLflow UI did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
