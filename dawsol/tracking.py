"""MLflow tracking: the store, one run per cell, retries on a busy sqlite store.

MLflow is a sink, never an input. The store is ``MLFLOW_TRACKING_URI`` or, by default,
``sqlite:///mlflow.db`` in the current directory with artifacts beside it in ``mlartifacts/``.
Every cell is one run of the experiment ``dawsol`` (``MLFLOW_EXPERIMENT_NAME`` overrides it),
named after the cell and tagged ``dawsol.cell``; ``dawsol train`` creates or resumes it and
``dawsol evaluate`` logs into it. Parallel cells share one sqlite file: the store is created
once under a file lock (``init_store``), and every write is retried while the database is locked.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dawsol.errors import DawsolError
from dawsol.provenance import code_version

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from dawsol.config import Settings

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "dawsol"
ARTIFACT_DIR = "mlartifacts"
CELL_TAG = "dawsol.cell"
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


def with_retry(fn: Callable[..., T], *args: Any, timeout: float = RETRY_SECONDS, **kwargs: Any) -> T:
    """Call ``fn``, retrying with jittered exponential backoff while the store is locked."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
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


def init_store(uri: str | None = None) -> tuple[MlflowClient, str]:
    """Create the store and the experiment if missing (safe to call from parallel jobs).

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
    with _store_lock(uri):
        try:
            client = with_retry(MlflowClient, tracking_uri=uri)
            experiment = with_retry(client.get_experiment_by_name, name)
            if experiment is None:
                experiment_id = with_retry(client.create_experiment, name, artifact_location=artifact_root(uri))
            else:
                experiment_id = experiment.experiment_id
        except DawsolError:
            raise
        except Exception as exc:
            raise DawsolError(
                f"MLflow store {uri}: cannot open it ({str(exc).splitlines()[0]}); "
                "check MLFLOW_TRACKING_URI or pass --no-tracking"
            ) from exc
    return client, experiment_id


def code_tags(code: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A code version (``provenance.code_version``) as tags: ``dawsol_version``, ``git_commit``, ``git_dirty``."""
    return {
        f"{prefix}dawsol_version": str(code.get("dawsol")),
        f"{prefix}git_commit": str(code.get("git_commit") or "unknown"),
        f"{prefix}library": str(code.get("library") or "unknown"),
        f"{prefix}git_dirty": str(code.get("git_dirty")).lower(),
    }


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
    """One cell's MLflow run: every write goes through ``with_retry``."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(cls, settings: Settings, run_id: str | None = None) -> CellRun:
        """Resume ``run_id`` if it is in the store, else create the cell's run with its params."""
        client, experiment_id = init_store()
        if run_id is not None and _run_exists(client, run_id):
            with_retry(client.update_run, run_id, status="RUNNING")
            return cls(client, run_id)
        return cls._create(client, experiment_id, settings)

    @classmethod
    def find(cls, settings: Settings) -> CellRun:
        """The cell's newest run (by its ``dawsol.cell`` tag), created if there is none."""
        client, experiment_id = init_store()
        runs = tagged_runs(client, experiment_id, CELL_TAG, settings.cell.name, newest_only=True)
        if runs:
            return cls(client, runs[0].info.run_id)
        return cls._create(client, experiment_id, settings)

    @classmethod
    def _create(cls, client: MlflowClient, experiment_id: str, settings: Settings) -> CellRun:
        from mlflow.entities import Param

        run = with_retry(client.create_run, experiment_id, run_name=settings.cell.name, tags=cell_tags(settings))
        params = [Param(key, "None" if value is None else str(value)) for key, value in settings.flat().items()]
        for start in range(0, len(params), 100):
            with_retry(client.log_batch, run.info.run_id, params=params[start : start + 100])
        return cls(client, run.info.run_id)

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


def serve_command(host: str = "127.0.0.1", port: int = 5000, workers: int | None = None) -> list[str]:
    """The ``mlflow ui`` command line for the project's store, listening on ``host`` (loopback by default)."""
    uri = tracking_uri()
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    command += ["--workers", str(workers or ui_workers())]
    root = artifact_root(uri)
    if root is not None:
        command += ["--default-artifact-root", root]
    return command
