"""One MLflow run per cell, parent runs, and the queries that find them.

Every cell is one run of the experiment ``dawsol`` (``MLFLOW_EXPERIMENT_NAME`` overrides it), named
``<wsol>-<da>/seed<k> · <dataset>/<backbone>`` (``run_name``) and tagged with the full cell (``dawsol.cell``) and
MLflow's own source, user and commit tags (``source_tags``); ``dawsol train`` creates or resumes it under the cell's
trainer lock and ``dawsol evaluate`` logs into it. A search's trials and a grid's cells are nested under one parent
run each (``parent_run``, ``nest``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dawsol.config import tree_digest
from dawsol.files import folder_digests
from dawsol.layout import split_file
from dawsol.provenance import code_version

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from dawsol.config import Cell, Settings
from dawsol.tracking.store import CELL_TAG, PARENT_TAG, STALE_TAG, init_store, tracking_uri, with_retry

log = logging.getLogger(__name__)


def source_tags(command: str) -> dict[str, str]:
    """MLflow's own context tags for a run that ``dawsol <command>`` creates: the UI's Source, User and Version.

    ``mlflow.user`` and ``mlflow.source.type`` come from MLflow's context registry; the source
    name is the command (``dawsol train``) rather than the path of the script that ran it, and
    ``mlflow.source.git.commit`` the commit of the dawsol code (``provenance.code_version``).
    """
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME

    tags = resolve_tags({MLFLOW_SOURCE_NAME: f"dawsol {command}"}, ignore=[GitRunContext])
    commit = code_version().get("git_commit")
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def code_tags(code: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A code version (``provenance.code_version``) as tags: ``dawsol_version``, ``git_commit``, ``git_dirty``."""
    return {
        f"{prefix}dawsol_version": str(code.get("dawsol")),
        f"{prefix}git_commit": str(code.get("git_commit") or "unknown"),
        f"{prefix}library": str(code.get("library") or "unknown"),
        f"{prefix}git_dirty": str(code.get("git_dirty")).lower(),
    }


def run_name(cell: Cell) -> str:
    """A cell's run name, what differs between a grid's runs first (the runs table cuts long names).

    ``synthetic/efficientnet_lite0/cam-mmd/seed0`` gives ``cam-mmd/seed0 · synthetic/efficientnet_lite0``;
    the whole cell is the ``dawsol.cell`` tag.
    """
    dataset, backbone, method, seed = cell.name.split("/")
    return f"{method}/{seed} · {dataset}/{backbone}"


def cell_tags(settings: Settings) -> dict[str, str]:
    """The tags of a cell's run: the cell's parts, the settings digest and the code version that trained it."""
    cell = settings.cell
    return {
        CELL_TAG: cell.name,
        "dataset": cell.dataset,
        "backbone": cell.backbone,
        "wsol": cell.wsol,
        "da": cell.da,
        "seed": str(cell.seed),
        "settings_digest": settings.digest(),
        **code_tags(code_version()),
    }


# settings and bookkeeping of a split's metrics dict: in the metrics.json artifact, not metrics a user plots
NOT_METRICS = frozenset({"num_images", "cam_curve_interval", "best_threshold", "chosen_threshold", "pIoU_threshold"})


def metric_items(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Flatten a (nested) metrics dict into MLflow metric names and finite numbers.

    ``{"BoxAcc": {"50": 61.0}, "GT-known Loc": 70.0}`` with prefix ``val.`` gives
    ``val.BoxAcc.50`` and ``val.GT-known_Loc``; strings, lists, None and booleans are skipped, and
    so are image counts and CAM thresholds (``NOT_METRICS``: they stay in the metrics.json artifact).
    """
    for key, value in metrics.items():
        if key in NOT_METRICS:
            continue
        name = f"{prefix}{str(key).replace(' ', '_')}"
        if isinstance(value, Mapping):
            yield from metric_items(value, name + ".")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


class CellRun:
    """One MLflow run (a cell's, or a parent's): every write goes through ``with_retry``.

    ``created`` is True when ``find`` had to create the run (its caller ends it).
    """

    def __init__(self, client: MlflowClient, run_id: str, created: bool = False) -> None:
        self.client = client
        self.run_id = run_id
        self.created = created

    @classmethod
    def start(cls, settings: Settings, run_id: str | None = None) -> CellRun:
        """The trainer's run; call it holding the cell's trainer lock (``dawsol.training.cell.trainer_lock``).

        Resumes ``run_id`` (the checkpoint's) if the store has it; else reuses the cell's newest
        RUNNING run with the same settings and no epoch logged (a trainer killed before its first
        checkpoint); else creates the cell's run. Since the lock means no other trainer of the cell
        lives, every other RUNNING run of the cell was left by a killed one: it ends KILLED, tagged
        ``dawsol.ended_by`` with the run that took over.
        """
        client, experiment_id = init_store()
        running = cell_runs(client, experiment_id, settings.cell.name, status="RUNNING")
        if run_id is not None and _run_exists(client, run_id):
            run = cls(client, run_id)
            with_retry(client.update_run, run_id, status="RUNNING")
        else:
            empty = [
                found
                for found in running
                if found.data.tags.get("settings_digest") == settings.digest()
                and not any(key.startswith("train.") for key in found.data.metrics)
            ]
            if empty:
                run = cls(client, empty[0].info.run_id)
                run._describe(settings, "train")  # again: the killed trainer may have stopped half-way
            else:
                run = cls._create(client, experiment_id, settings, "train")
        for stale in running:
            if stale.info.run_id != run.run_id:
                with_retry(client.set_tag, stale.info.run_id, STALE_TAG, run.run_id)
                with_retry(client.set_terminated, stale.info.run_id, "KILLED")
                log.info("%s: MLflow run %s of a killed trainer ended KILLED", settings.cell.name, stale.info.run_id)
        return run

    @classmethod
    def find(cls, settings: Settings, run_id: str | None = None) -> CellRun:
        """The run an evaluation logs into: ``run_id`` (the checkpoint's) if the store has it, else the
        cell's newest run (by its ``dawsol.cell`` tag), else a new one (``created``: an imported cell)."""
        client, experiment_id = init_store()
        if run_id is not None and _run_exists(client, run_id):
            return cls(client, run_id)
        runs = tagged_runs(client, experiment_id, CELL_TAG, settings.cell.name, newest_only=True)
        if runs:
            return cls(client, runs[0].info.run_id)
        run = cls._create(client, experiment_id, settings, "evaluate")
        run.created = True
        return run

    @classmethod
    def _create(cls, client: MlflowClient, experiment_id: str, settings: Settings, command: str) -> CellRun:
        run = with_retry(client.create_run, experiment_id, run_name=run_name(settings.cell))
        created = cls(client, run.info.run_id)
        created._describe(settings, command)
        return created

    def _describe(self, settings: Settings, command: str) -> None:
        """The cell's tags (its own and MLflow's source tags) and its settings as params."""
        from mlflow.entities import Param, RunTag

        tags = [RunTag(key, value) for key, value in {**source_tags(command), **cell_tags(settings)}.items()]
        with_retry(self.client.log_batch, self.run_id, tags=tags)
        params = [Param(key, "None" if value is None else str(value)) for key, value in settings.flat().items()]
        for start in range(0, len(params), 100):
            with_retry(self.client.log_batch, self.run_id, params=params[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        """Log every finite number of a (nested) metrics dict, at ``step`` if given."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, value, now, step or 0) for key, value in metric_items(metrics, prefix)]
        for start in range(0, len(items), 1000):
            with_retry(self.client.log_batch, self.run_id, metrics=items[start : start + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file into the run's artifacts."""
        with_retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_dataset(self, settings: Settings, split: str, context: str) -> None:
        """A prepared split as one of the run's MLflow dataset inputs (the runs table's Dataset column).

        Named ``<dataset>/<split>``, its digest that of the split's metadata files, its source the
        split's metadata folder, its profile the number of images, its schema the metadata's
        ``image_id`` and ``label``; ``context`` (``training``, ``validation``, ``test``) is its
        ``mlflow.data.context`` tag. Read from the files without parsing them (ILSVRC's train split
        has 1.28 million lines).
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.types import ColSpec, Schema
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        ids = split_file(settings.dataset_dir, split)
        folder = ids.parent
        digest = tree_digest(folder_digests(folder))
        with open(ids, "rb") as handle:
            images = sum(1 for line in handle if line.strip())
        schema = Schema([ColSpec("string", "image_id"), ColSpec("long", "label")])
        dataset = Dataset(
            name=f"{settings.cell.dataset}/{split}",
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": folder.as_posix()}),
            schema=json.dumps({"mlflow_colspec": schema.to_dict()}),
            profile=json.dumps({"num_rows": images}),
        )
        entry = DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        with_retry(self.client.log_inputs, self.run_id, datasets=[entry])

    def log_model(self, path: Path, name: str, step: int) -> str:
        """A file (the cell's checkpoint) as an MLflow model of the run (the Models column); return its id."""
        from mlflow.entities import LoggedModelOutput

        experiment_id = with_retry(self.client.get_run, self.run_id).info.experiment_id
        model = with_retry(self.client.create_logged_model, experiment_id, name=name, source_run_id=self.run_id)
        with_retry(self.client.log_model_artifact, model.model_id, str(path))
        with_retry(self.client.finalize_logged_model, model.model_id, "READY")
        with_retry(self.client.log_outputs, self.run_id, [LoggedModelOutput(model.model_id, step)])
        return model.model_id

    @contextlib.contextmanager
    def system_metrics(self, interval: float) -> Iterator[None]:
        """MLflow's ``system/*`` metrics (CPU, memory, disk, network, GPU) sampled every ``interval`` s while
        inside (none for 0), their steps continuing those the run has (a resumed or reused run)."""
        if interval <= 0:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=interval, resume_logging=True, tracking_uri=tracking_uri()
        )
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def set_tag(self, key: str, value: str) -> None:
        """Set one tag on the run."""
        with_retry(self.client.set_tag, self.run_id, key, value)

    def set_code_tags(self, code: Mapping[str, Any], prefix: str = "") -> None:
        """Tag the run with a code version (e.g. ``evaluated_git_commit`` for the code that evaluated it)."""
        for key, value in code_tags(code, prefix).items():
            self.set_tag(key, value)

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        with_retry(self.client.set_terminated, self.run_id, status)


def tagged_runs(client: MlflowClient, experiment_id: str, tag: str, value: str, newest_only: bool = False) -> list[Any]:
    """The experiment's runs whose ``tag`` is ``value``, newest first (only the newest with ``newest_only``)."""
    return with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.`{tag}` = '{value}'",
        max_results=1 if newest_only else 1000,
        order_by=["attributes.start_time DESC"],
    )


def cell_runs(client: MlflowClient, experiment_id: str, cell: str, status: str) -> list[Any]:
    """The runs of ``cell`` with ``status`` (e.g. RUNNING), newest first."""
    return with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.`{CELL_TAG}` = '{cell}' and attributes.status = '{status}'",
        max_results=1000,
        order_by=["attributes.start_time DESC"],
    )


def parent_run(client: MlflowClient, experiment_id: str, tag: str, value: str, name: str, command: str) -> CellRun:
    """The run tagged ``tag`` = ``value`` (reused on every re-run), created as ``name`` if there is none:
    the parent of a search's trials (``dawsol.search.select``) or of a grid's cells (``dawsol.report``)."""
    found = tagged_runs(client, experiment_id, tag, value, newest_only=True)
    if found:
        return CellRun(client, found[0].info.run_id)
    run = with_retry(client.create_run, experiment_id, run_name=name, tags={tag: value, **source_tags(command)})
    return CellRun(client, run.info.run_id)


def nest(client: MlflowClient, experiment_id: str, parent: CellRun, cells: Iterable[str]) -> None:
    """Make each cell's newest run (the one its results were logged into) a child of ``parent``."""
    for cell in cells:
        for child in tagged_runs(client, experiment_id, CELL_TAG, cell, newest_only=True):
            with_retry(client.set_tag, child.info.run_id, PARENT_TAG, parent.run_id)


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        with_retry(client.get_run, run_id)
    except MlflowException:
        return False
    return True
