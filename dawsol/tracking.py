"""MLflow tracking: the store, one run per cell, parent runs, retries on a busy sqlite store.

MLflow is a sink, never an input. The store is ``MLFLOW_TRACKING_URI`` or, by default,
``sqlite:///mlflow.db`` in the current directory with artifacts beside it in ``mlartifacts/``
(re-pointed there when the store was copied or moved with its project: ``relocate_artifacts``).
Every cell is one run of the experiment ``dawsol`` (``MLFLOW_EXPERIMENT_NAME`` overrides it),
named ``<wsol>-<da>/seed<k> · <dataset>/<backbone>`` (``run_name``) and tagged with the full cell
(``dawsol.cell``) and MLflow's own source, user and commit tags (``source_tags``); ``dawsol train``
creates or resumes it under the cell's trainer lock and ``dawsol evaluate`` logs into it. A
search's trials and a grid's cells are nested under one parent run each (``parent_run``,
``nest``). Parallel cells share one sqlite file: the store is created once under a file lock
(``init_store``), and every write is retried while the database is locked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dawsol.atomic import DISK_FULL_ERRNOS
from dawsol.config import tree_digest
from dawsol.errors import DawsolError
from dawsol.layout import split_file
from dawsol.provenance import code_version

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from dawsol.config import Cell, Settings

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "dawsol"
ARTIFACT_DIR = "mlartifacts"
CELL_TAG = "dawsol.cell"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under its parent
NOTE_TAG = "mlflow.note.content"  # MLflow's own tag: the description shown above a run or experiment
STALE_TAG = "dawsol.ended_by"  # on a run a killed trainer left RUNNING: the run of the trainer that ended it
EXPERIMENT_NOTE = (
    "DA-WSOL reproduction by dawsol (README, section MLflow). One run per cell, named "
    "`<wsol>-<da>/seed<k> · <dataset>/<backbone>` and tagged `dawsol.cell`, `dataset`, `backbone`, `wsol`, "
    "`da`, `seed`: params are the resolved settings, `train.*` and `val.*` are per-epoch curves (step = epoch), "
    "`val.final.*` and `test.final.*` the final scores of `dawsol evaluate`, `system/*` the machine while it "
    "trained; image counts and CAM thresholds are in the `evaluation/metrics.json` artifact. `dawsol report` "
    "nests the grid's cell runs under one `grid ...` run per grid and code version (tables, figures, the "
    "reported-vs-reproduced table), a search nests its trials under `search ...` runs. Filter with e.g. "
    "`tags.da = 'mmd'`."
)
RETRY_SECONDS = 300.0
LOCKED_MARKERS = ("database is locked", "database table is locked")

log = logging.getLogger(__name__)
T = TypeVar("T")


def tracking_uri() -> str:
    """The store URI: ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the current directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def experiment_name() -> str:
    """The experiment holding the cells' runs: ``MLFLOW_EXPERIMENT_NAME`` or ``dawsol``."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other store."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: ``mlartifacts/`` beside a sqlite file, else the server's."""
    db = sqlite_path(uri)
    return (db.resolve().parent / ARTIFACT_DIR).as_uri() if db is not None else None


def is_locked_error(exc: BaseException) -> bool:
    """True for sqlite's transient "database is locked" errors, however MLflow wraps them."""
    text = str(exc).lower()
    return any(marker in text for marker in LOCKED_MARKERS)


def is_full_error(exc: BaseException) -> bool:
    """True where the store's disk is full: an OSError of a full disk or quota anywhere in the exception's chain
    (an artifact copy), or sqlite's "database or disk is full", however MLflow wraps it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        if "database or disk is full" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def with_retry(fn: Callable[..., T], *args: Any, timeout: float = RETRY_SECONDS, **kwargs: Any) -> T:
    """Call ``fn``, retrying with jittered exponential backoff while the store is locked; a full disk under the
    store is one ``DawsolError`` line naming it (the cell's result files are written before tracking)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if is_full_error(exc):
                raise DawsolError(
                    f"MLflow store {tracking_uri()}: its disk is full ({str(exc).splitlines()[0][:120]}); "
                    "the result files are written: free space there and re-run the same command, "
                    "or pass --no-tracking"
                ) from None
            if not is_locked_error(exc) or time.monotonic() > deadline:
                raise
            log.debug("tracking store busy, retrying in %.2fs", delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock around store creation, for sqlite stores on POSIX; a no-op otherwise."""
    db = sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    if db is None or fcntl is None:
        yield
        return
    lock_dir = db.resolve().parent / ARTIFACT_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / ".store.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_artifact_root(location: str) -> bool:
    """True for an ``.../mlartifacts`` folder (``artifact_root``'s name), as a path or a ``file:`` URI."""
    return location.rstrip("/").rsplit("/", 1)[-1] == ARTIFACT_DIR


def relocate_artifacts(db: Path, root: str) -> list[str]:
    """Point a sqlite store's ``mlartifacts`` locations at ``root``; return the old ones.

    MLflow stores absolute artifact locations, so a project copied or moved with its
    ``mlflow.db`` would keep writing into (and its UI reading from) the original's
    ``mlartifacts/``. Every experiment kept in an ``mlartifacts`` folder other than ``root``,
    and its runs' and logged models' locations under it, move to ``root``: the copy's own
    folder, beside its database (which holds the copied artifacts, if they were copied).
    """
    with contextlib.closing(sqlite3.connect(db, timeout=RETRY_SECONDS)) as connection, connection:
        rows = connection.execute(
            "SELECT DISTINCT artifact_location FROM experiments WHERE artifact_location != ?", (root,)
        )
        old_roots = [location for (location,) in rows if location and _is_artifact_root(location)]
        for old in old_roots:
            connection.execute("UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?", (root, old))
            for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
                connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                    (root, len(old) + 1, len(old) + 1, old + "/"),
                )
    return old_roots


def init_store(uri: str | None = None) -> tuple[MlflowClient, str]:
    """Create the store and the experiment (with its description) if missing; safe from parallel jobs.

    A sqlite store found in another folder than its artifacts were first kept beside (a copied
    or moved project) is re-pointed at its own ``mlartifacts/`` (``relocate_artifacts``).
    Returns the client and the experiment id.
    """
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.resolve().parent.is_dir():
        raise DawsolError(
            f"MLflow store {uri}: folder {db.parent} does not exist (create it or set MLFLOW_TRACKING_URI)"
        )
    name = experiment_name()
    root = artifact_root(uri)
    with _store_lock(uri):
        try:
            client = with_retry(MlflowClient, tracking_uri=uri)
            experiment = with_retry(client.get_experiment_by_name, name)
            if experiment is None:
                experiment_id = with_retry(
                    client.create_experiment, name, artifact_location=root, tags={NOTE_TAG: EXPERIMENT_NOTE}
                )
            else:
                experiment_id = experiment.experiment_id
                if db is not None and root is not None and experiment.artifact_location != root:
                    moved = with_retry(relocate_artifacts, db, root)
                    if moved:
                        log.info("MLflow store %s: artifact locations %s re-pointed at %s", uri, ", ".join(moved), root)
                if NOTE_TAG not in experiment.tags:  # a store made before experiments had a description
                    with_retry(client.set_experiment_tag, experiment_id, NOTE_TAG, EXPERIMENT_NOTE)
        except DawsolError:
            raise
        except Exception as exc:
            raise DawsolError(
                f"MLflow store {uri}: cannot open it ({str(exc).splitlines()[0]}); "
                "check MLFLOW_TRACKING_URI or pass --no-tracking"
            ) from exc
    return client, experiment_id


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
        files = sorted(path for path in folder.iterdir() if path.is_file())
        digest = tree_digest({path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in files})
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


def ui_workers() -> int:
    """Server processes for ``mlflow ui``: half the cores, 1 to 4 (MLflow's 4 on 2 cores start in 39 s, 1 in 17 s)."""
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def check_port_free(host: str, port: int) -> None:
    """A DawsolError naming host and port unless a server could listen there now."""
    if not 0 < port < 65536:
        raise DawsolError(f"--port {port}: a port lies in 1..65535")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise DawsolError(f"cannot serve MLflow on {host}:{port} ({exc.strerror}); pick another --port") from None


def serve_environment() -> dict[str, str]:
    """The environment of ``mlflow ui``: MLflow's job runner (GenAI scorers and trace rollups, which dawsol
    never uses: up to 10 more processes and a slower start) off unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set."""
    return {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    }


def serve_command(host: str = "127.0.0.1", port: int = 5000, workers: int | None = None) -> list[str]:
    """The ``mlflow ui`` command line for the project's store, listening on ``host`` (loopback by default)."""
    uri = tracking_uri()
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    command += ["--workers", str(workers or ui_workers())]
    root = artifact_root(uri)
    if root is not None:
        command += ["--default-artifact-root", root]
    return command


def serve(host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run ``mlflow ui`` on the project's store until it stops; its exit code (0 when stopped by a signal).

    The server runs in its own process group, and SIGTERM or SIGINT to this process stops that whole group
    (``mlflow ui`` and its uvicorn workers), so a terminated ``dawsol tracking ui`` leaves no server behind.
    """
    server = subprocess.Popen(serve_command(host, port), env=serve_environment(), start_new_session=True)

    def stop(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # workers the server left, if any
    return 0 if code < 0 else code
