"""The report's runs as MLflow shows results: summary runs under a grid's parent run, and logged tables.

A summary run stands for one row of a results table (a method of a dataset and backbone): its metrics are
the seed means and stds, so that MLflow's runs table and chart view compare methods directly. Both the
summary runs and the tables are replaced by every ``dawsol report``, never added to: a summary run is found
again by its key (tag ``dawsol.summary_of``) under its parent, and a table's earlier file is removed before
MLflow's ``log_table`` (which appends to a file it finds) writes it again (docs/mlflow-ui.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
from dawsol.tracking.runs import CellRun, source_tags
from dawsol.tracking.store import PARENT_TAG, tracking_uri, with_retry

RUN_KIND_TAG = "dawsol.kind"  # what a run of the report is: ``grid`` (a grid's parent run) or ``summary``
GRID_KIND = "grid"
SUMMARY_KIND = "summary"
SUMMARY_KEY_TAG = "dawsol.summary_of"  # the row a summary run stands for: <dataset>/<backbone>/<method>
SUMMARY_FILTER = f"tags.`{RUN_KIND_TAG}` = '{SUMMARY_KIND}'"  # the runs table's filter showing them alone
# the UI's shared views: experiment tags ``mlflow.sharedViewState.<key>``, opened by ``?viewStateShareKey=<key>``
SHARED_VIEW_TAG = "mlflow.sharedViewState."
RESULTS_VIEW = "dawsol-results"  # the runs table as the results table: the summary runs, their metrics as columns


@dataclass(frozen=True)
class Summary:
    """One summary run to be: its key, run name, tags and metrics (flat MLflow names)."""

    key: str
    name: str
    metrics: Mapping[str, float]
    tags: Mapping[str, str] = field(default_factory=dict)


def summary_runs(client: MlflowClient, experiment_id: str, parent: CellRun) -> dict[str, str]:
    """The summary runs under ``parent``: key -> run id (deleted runs are not searched)."""
    found = with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"{SUMMARY_FILTER} and tags.`{PARENT_TAG}` = '{parent.run_id}'",
        max_results=5000,
    )
    return {run.data.tags.get(SUMMARY_KEY_TAG, run.info.run_id): run.info.run_id for run in found}


def sync_summaries(
    client: MlflowClient, experiment_id: str, parent: CellRun, summaries: Sequence[Summary]
) -> dict[str, str]:
    """Make the summary runs under ``parent`` exactly ``summaries``; return key -> run id.

    A summary found under its key is reused (its metrics logged again: the runs table shows the newest
    value), a new one is created FINISHED, and one whose key is no longer given is deleted.
    """
    from mlflow.entities import Metric, RunTag

    existing = summary_runs(client, experiment_id, parent)
    now = int(time.time() * 1000)
    ids = {}
    for summary in summaries:
        tags = {**summary.tags, RUN_KIND_TAG: SUMMARY_KIND, SUMMARY_KEY_TAG: summary.key, PARENT_TAG: parent.run_id}
        run_id = existing.get(summary.key)
        if run_id is None:
            tags.update(source_tags("report"))
            run_id = with_retry(client.create_run, experiment_id, run_name=summary.name, tags=tags).info.run_id
        else:
            with_retry(client.log_batch, run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        metrics = [Metric(name, value, now, 0) for name, value in summary.metrics.items()]
        for start in range(0, len(metrics), 1000):
            with_retry(client.log_batch, run_id, metrics=metrics[start : start + 1000])
        with_retry(client.set_terminated, run_id, "FINISHED")
        ids[summary.key] = run_id
    for key, run_id in existing.items():
        if key not in ids:
            with_retry(client.delete_run, run_id)
    return ids


def log_table(run: CellRun, frame: pd.DataFrame, artifact_file: str) -> None:
    """``frame`` as the run's table ``artifact_file`` (``.json``), replacing the one an earlier report logged:
    MLflow's artifact viewer shows it as a sortable table."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    artifact_uri = with_retry(run.client.get_run, run.run_id).info.artifact_uri
    repository = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri())
    listed = {entry.path for entry in with_retry(repository.list_artifacts, os.path.dirname(artifact_file) or None)}
    if artifact_file in listed:
        with_retry(repository.delete_artifacts, artifact_file)
    with_retry(run.client.log_table, run.run_id, frame, artifact_file)


def share_results_view(client: MlflowClient, experiment_id: str, columns: Sequence[str], order_by: str) -> None:
    """Save the UI view ``RESULTS_VIEW`` in the experiment: the summary runs alone, metric ``columns`` shown,
    sorted by metric ``order_by``, best first (sorted by a metric, the UI lists nested runs flat)."""
    state = {
        "searchFilter": SUMMARY_FILTER,
        "orderByKey": f"metrics.`{order_by}`",
        "orderByAsc": False,
        "selectedColumns": [f"metrics.`{column}`" for column in columns],
    }
    with_retry(client.set_experiment_tag, experiment_id, SHARED_VIEW_TAG + RESULTS_VIEW, json.dumps(state))


def has_results_view(client: MlflowClient, experiment_id: str) -> bool:
    """True once a report has saved ``RESULTS_VIEW`` in the experiment."""
    return SHARED_VIEW_TAG + RESULTS_VIEW in with_retry(client.get_experiment, experiment_id).tags


def results_table(client: MlflowClient, experiment_id: str) -> tuple[str, str] | None:
    """The newest grid run's first logged table (``log_table``): its run id and artifact path, or None."""
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    found = with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.`{RUN_KIND_TAG}` = '{GRID_KIND}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    for run in found:
        for artifact in json.loads(run.data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]")):
            if artifact.get("type") == "table":
                return run.info.run_id, artifact["path"]
    return None
