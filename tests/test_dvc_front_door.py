"""What DVC shows a user: compact headline metrics per cell, and a plots page that needs no internet."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from workflow_fixtures import copy_project, run_tool

from dawsol.protocol.output import HEADLINE_METRICS, headline_metrics, write_headline


def test_headline_keeps_the_compared_numbers_of_each_split(tmp_path: Path) -> None:
    split = {name: 10.0 + i for i, name in enumerate(HEADLINE_METRICS)}
    split.update({"PxAP": None, "num_images": 8, "BoxAcc": {"50": 1.0}, "chosen_threshold": {"pIoU": 0.3}})
    document = {"cell": "x", "splits": {"val": split, "test": {**split, "PxAP": 55.0}}}
    headline = headline_metrics(document)
    assert list(headline) == ["val", "test"]
    assert "PxAP" not in headline["val"] and headline["test"]["PxAP"] == 55.0  # no column of nulls
    assert set(headline["test"]) == set(HEADLINE_METRICS)  # no counts, thresholds or nested blocks
    write_headline(tmp_path / "headline.json", document)
    assert json.loads((tmp_path / "headline.json").read_text()) == headline


def test_every_committed_cell_has_its_headline(project_root: Path) -> None:
    """The committed results carry what `dawsol evaluate` writes beside metrics.json."""
    for metrics in (project_root / "results/cells").rglob("metrics.json"):
        headline = json.loads((metrics.parent / "headline.json").read_text())
        assert headline == headline_metrics(json.loads(metrics.read_text())), metrics.parent


@pytest.fixture
def project(tmp_path: Path, project_root: Path) -> Path:
    project = copy_project(project_root, tmp_path / "project")
    shutil.copytree(project_root / "results", project / "results")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    return project


def test_dvc_plots_page_loads_vega_from_itself(project: Path) -> None:
    """`dvc plots show` uses .dvc/plots/offline.html (.dvc/config): Vega inlined, no CDN script tags."""
    run_tool(["dvc", "plots", "show"], project)
    page = (project / "dvc_plots/index.html").read_text()
    assert "vegaEmbed(" in page and "cdn.jsdelivr" not in page and "<script src=" not in page
    for library in ("vega@5", "vega-lite@5", "vega-embed@6"):
        assert f"/* {library}" in page


def test_what_a_stage_writes_for_another_comes_back_with_git_clone_and_dvc_pull(project_root: Path) -> None:
    """`dvc repro --dry` stops at a missing input of a stage it would run (treeverse/dvc#9818): every input
    one stage writes for another is committed to git or a cached out (`dvc pull`), never cache: false and
    git-ignored (docs/architecture.md, "DVC and the grid")."""
    from dvc.repo import Repo

    with Repo(str(project_root), uninitialized=True) as repo:
        stages = list(repo.index.stages)
    outs = {str(out.def_path): out for stage in stages for out in stage.outs}
    inputs = {str(dep.def_path) for stage in stages for dep in stage.deps} & set(outs)
    uncached = sorted(path for path in inputs if not outs[path].use_cache)
    ignored = subprocess.run(
        ["git", "check-ignore", "--stdin"], cwd=project_root, input="\n".join(uncached), capture_output=True, text=True
    ).stdout.split()
    assert len(inputs) > 50  # the default grid: data, settings, checkpoints, logs, evaluation outputs
    assert ignored == []
