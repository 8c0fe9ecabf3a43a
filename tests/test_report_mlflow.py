"""`dawsol report` in MLflow: a summary run per method (seed means as metrics), the tables as MLflow tables,
and a store made by the previous version upgraded in place."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest
from test_workflow_report import fake_results  # noqa: F401 (a fixture)
from workflow_fixtures import METRIC_NAMES, cell_value

from dawsol import tracking
from dawsol.cli import main
from dawsol.config import Cell, grid_cells, load_params, tree_digest

METHODS = ("cam-none", "cam-mmd", "cam-dann")


def grid(params_copy: Path) -> list[Cell]:
    return [c for c in grid_cells(load_params(params_copy), params_copy) if c.trial is None]


def summaries(client, experiment_id: str) -> dict[str, object]:
    """The summary runs by run name."""
    runs = client.search_runs([experiment_id], filter_string=tracking.SUMMARY_FILTER)
    return {run.info.run_name: run for run in runs}


def cell_runs(client, experiment_id: str, cells: list[Cell]) -> dict[str, str]:
    """One run per cell as `dawsol train` makes it (its tag), by cell name."""
    return {
        cell.name: client.create_run(experiment_id, run_name=cell.name, tags={tracking.CELL_TAG: cell.name}).info.run_id
        for cell in cells
    }


@pytest.mark.slow
def test_one_summary_run_per_method_with_the_seed_means_refreshed_never_duplicated(
    fake_results: Path,  # noqa: F811
    params_copy: Path,
) -> None:
    client, experiment_id = tracking.init_store()
    cells = grid(params_copy)
    cell_runs(client, experiment_id, cells)
    assert main(["report"]) == 0
    (grid_run,) = client.search_runs([experiment_id], filter_string="tags.`dawsol.kind` = 'grid'")
    found = summaries(client, experiment_id)
    assert set(found) == {f"{method}/mean · synthetic/efficientnet_lite0" for method in METHODS}
    for name, run in found.items():
        da = name.split("/")[0].removeprefix("cam-")
        tags = run.data.tags
        assert tags[tracking.PARENT_TAG] == grid_run.info.run_id and run.info.status == "FINISHED"
        assert (tags["dataset"], tags["backbone"], tags["wsol"], tags["da"], tags["extractor"]) == (
            "synthetic",
            "efficientnet_lite0",
            "cam",
            da,
            "cam",
        )
        assert run.data.metrics["seeds"] == 3
        for metric in METRIC_NAMES:
            values = [cell_value(Cell("synthetic", "efficientnet_lite0", "cam", da, s), metric) for s in (0, 1, 2)]
            name_of = metric.replace(" ", "_")
            for split in ("test", "val"):
                assert run.data.metrics[f"{split}.{name_of}.mean"] == round(statistics.mean(values), 2)
                assert run.data.metrics[f"{split}.{name_of}.std"] == round(statistics.stdev(values), 2)
    view = json.loads(client.get_experiment(experiment_id).tags["mlflow.sharedViewState.dawsol-results"])
    assert view["searchFilter"] == tracking.SUMMARY_FILTER and view["orderByKey"] == "metrics.`test.MaxBoxAccV2.mean`"
    assert view["selectedColumns"][:2] == ["metrics.`test.Top-1_Cls.mean`", "metrics.`test.Top-1_Cls.std`"]
    columns = view["selectedColumns"]
    assert len(columns) == 2 * len(METRIC_NAMES) + 1 and columns[-1] == "metrics.`seeds`"
    csv = pd.read_csv(fake_results / "results/tables/synthetic.csv").set_index("method")
    mmd = found["cam-mmd/mean · synthetic/efficientnet_lite0"]
    assert mmd.data.metrics["test.MaxBoxAccV2.mean"] == pytest.approx(csv.loc["cam-mmd", "MaxBoxAccV2_mean"], abs=0.005)

    changed = next(c for c in cells if c.da == "mmd" and c.seed == 0)  # re-evaluated, same code version
    path = fake_results / "results/cells" / changed.name / "metrics.json"
    data = json.loads(path.read_text())
    data["splits"]["test"]["MaxBoxAccV2"] += 3.0
    path.write_text(json.dumps(data))
    assert main(["report"]) == 0
    again = summaries(client, experiment_id)
    assert {name: run.info.run_id for name, run in again.items()} == {
        name: run.info.run_id for name, run in found.items()
    }
    refreshed = again["cam-mmd/mean · synthetic/efficientnet_lite0"].data.metrics["test.MaxBoxAccV2.mean"]
    assert refreshed == pytest.approx(mmd.data.metrics["test.MaxBoxAccV2.mean"] + 1.0)


@pytest.mark.slow
def test_the_tables_are_logged_as_mlflow_tables_replaced_by_each_report(
    fake_results: Path,  # noqa: F811
) -> None:
    client, experiment_id = tracking.init_store()
    for _ in range(2):
        assert main(["report"]) == 0
    (grid_run,) = client.search_runs([experiment_id], filter_string="tags.`dawsol.kind` = 'grid'")
    logged = json.loads(grid_run.data.tags["mlflow.loggedArtifacts"])
    names = sorted(path.stem for path in (fake_results / "results/tables").glob("*.csv"))  # every table written
    assert {"synthetic", "synthetic_posthoc", "reported_vs_reproduced"} <= set(names)
    assert sorted(logged, key=str) == sorted(({"path": f"tables/{n}.json", "type": "table"} for n in names), key=str)
    for name in names:
        table = client.load_table(experiment_id, f"tables/{name}.json", run_ids=[grid_run.info.run_id])
        csv = pd.read_csv(fake_results / f"results/tables/{name}.csv")
        assert list(table.columns) == list(csv.columns) and len(table) == len(csv)  # once, not once per report
    assert tracking.results_table(client, experiment_id) == (grid_run.info.run_id, "tables/synthetic.json")
    results = client.load_table(experiment_id, "tables/synthetic.json", run_ids=[grid_run.info.run_id])
    assert len(results) == 5  # three methods and the two no-model baselines
    assert results.set_index("method").loc["cam-mmd", "seeds"] == 3


@pytest.mark.slow
def test_a_store_of_the_previous_version_is_upgraded_in_place_without_losing_a_run(
    fake_results: Path,  # noqa: F811
    params_copy: Path,
) -> None:
    """The previous version's layout: an experiment with a description and no kind, the cells' runs nested
    under one grid run tagged `dawsol.grid` (a digest of the cells and code versions) and `dawsol.summary`."""
    from mlflow import MlflowClient
    from workflow_fixtures import CODE

    from dawsol.provenance import describe

    client = MlflowClient(tracking_uri=f"sqlite:///{fake_results / 'mlflow.db'}")
    experiment_id = client.create_experiment(
        "dawsol",
        artifact_location=(fake_results / "mlartifacts").as_uri(),
        tags={"mlflow.note.content": "DA-WSOL reproduction by dawsol (README, section MLflow). One run per cell."},
    )
    cells = grid(params_copy)
    children = cell_runs(client, experiment_id, cells)
    key = tree_digest({"cells": [c.name for c in cells], "code": [describe(CODE)]})
    old_grid = client.create_run(
        experiment_id, run_name="grid old · 9 cells of synthetic", tags={"dawsol.grid": key, "dawsol.summary": "true"}
    ).info.run_id
    for run_id in children.values():
        client.set_tag(run_id, tracking.PARENT_TAG, old_grid)
    other = client.create_run(experiment_id, run_name="someone's own run").info.run_id
    before = {run.info.run_id for run in client.search_runs([experiment_id])}

    assert main(["report"]) == 0
    experiment = client.get_experiment(experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"] == tracking.EXPERIMENT_NOTE
    runs = {run.info.run_id: run for run in client.search_runs([experiment_id])}
    assert before <= set(runs) and other in runs
    grid_run = runs[old_grid]  # the same grid: its run reused
    assert grid_run.data.tags["dawsol.kind"] == "grid" and "dawsol.summary" not in grid_run.data.tags
    assert all(runs[run_id].data.tags[tracking.PARENT_TAG] == old_grid for run_id in children.values())
    found = summaries(client, experiment_id)
    assert len(found) == len(METHODS)
    assert all(run.data.tags[tracking.PARENT_TAG] == old_grid for run in found.values())
    assert set(runs) - before == {run.info.run_id for run in found.values()}
