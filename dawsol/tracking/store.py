"""The MLflow store: its URI and experiment, creation under a file lock, re-pointing a copied store at its own
artifacts, the tags every run shares, retries while the sqlite database is locked.

The store is ``MLFLOW_TRACKING_URI`` or, by default, ``sqlite:///mlflow.db`` in the current directory with artifacts
beside it in ``mlartifacts/`` (re-pointed there when the store was copied or moved with its project:
``relocate_artifacts``). Parallel cells share one sqlite file: the store is created once under a file lock
(``init_store``), and every write is retried while the database is locked (``with_retry``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

from dawsol.atomic import DISK_FULL_ERRNOS
from dawsol.errors import DawsolError

if TYPE_CHECKING:
    from mlflow import MlflowClient


DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "dawsol"
ARTIFACT_DIR = "mlartifacts"
CELL_TAG = "dawsol.cell"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under its parent
NOTE_TAG = "mlflow.note.content"  # MLflow's own tag: the description shown above a run or experiment
KIND_TAG = "mlflow.experimentKind"  # MLflow's own record of an experiment's kind (model training, or GenAI)
EXPERIMENT_KIND = "custom_model_development"
STALE_TAG = "dawsol.ended_by"  # on a run a killed trainer left RUNNING: the run of the trainer that ended it
EXPERIMENT_NOTE = (
    "DA-WSOL reproduction by dawsol. Browsing it: README, section MLflow UI. One run per cell, named "
    "`<wsol>-<da>/seed<k> · <dataset>/<backbone>` and tagged `dawsol.cell`, `dataset`, `backbone`, `wsol`, "
    "`da`, `seed`: params are the resolved settings, `train.*` and `val.*` are per-epoch curves (step = epoch), "
    "`val.final.*` and `test.final.*` the final scores of `dawsol evaluate`, `system/*` the machine while it "
    "trained; image counts and CAM thresholds are in the `evaluation/metrics.json` artifact. `dawsol report` "
    "nests the grid's cell runs under one `grid ...` run per grid and code version (tables, figures, the "
    "reported-vs-reproduced table; the `.json` ones open as tables in its Artifacts tab) with one summary run "
    "`<wsol>-<da>/mean · <dataset>/<backbone>` per method: metrics `test.<metric>.mean`, `.std` and `seeds` "
    "(filter `tags.dawsol.kind = 'summary'`). A search nests its trials under `search ...` runs. Filter with "
    "e.g. `tags.da = 'mmd'`."
)
NOTE_PREFIX = EXPERIMENT_NOTE.split(".", 1)[0]  # a description by dawsol: refreshed when it changes
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
    waiting = False
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
            if not waiting:
                log.warning(
                    "MLflow store %s is locked by another process (a job or `dawsol tracking ui` writing to it); "
                    "waiting for it, up to %.0f s",
                    tracking_uri(),
                    timeout,
                )
                waiting = True
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


def _local_folder(location: str) -> Path | None:
    """The folder of a ``file:`` URI or a plain path; None for a remote location."""
    if location.startswith("file:"):
        return Path(url2pathname(urlparse(location).path))
    return None if "://" in location else Path(location)


def _travelled(root: Path, relative: str) -> bool:
    """True where the store entry kept at ``relative`` under an artifact root (``<run>/artifacts``,
    ``models/<id>/artifacts``) has its folder under ``root``: its files came with the store."""
    entry = Path(relative)
    folder = entry.parent if entry.name == "artifacts" else entry
    return (root / folder).is_dir()


def relocate_artifacts(db: Path, root: str) -> list[str]:
    """Point a sqlite store's ``mlartifacts`` locations at ``root`` where they provably moved there; return the
    old locations re-pointed.

    MLflow stores absolute artifact locations, so a project copied or moved with its ``mlflow.db`` would keep
    writing into (and its UI reading from) the original's ``mlartifacts/``. Only proven facts move a location:
    an old ``mlartifacts`` folder that is the same folder as ``root`` once links are resolved is left alone; a
    run or logged model is re-pointed only when its own folder is under ``root`` (it travelled with the
    database); the experiment (where new runs go) only when one of its entries travelled or its old folder is
    gone. A database reached through a link from another folder thus rewrites nothing: its runs' files are
    still where the store says.
    """
    new_folder = _local_folder(root)
    if new_folder is None:
        return []
    new_folder = new_folder.resolve()
    moved: list[str] = []
    with contextlib.closing(sqlite3.connect(db, timeout=1.0)) as connection, connection:  # with_retry waits, saying so
        rows = connection.execute(
            "SELECT DISTINCT artifact_location FROM experiments WHERE artifact_location != ?", (root,)
        )
        for old in [location for (location,) in rows if location and _is_artifact_root(location)]:
            old_folder = _local_folder(old)
            if old_folder is None or old_folder.resolve() == new_folder:
                continue
            prefix = old.rstrip("/") + "/"
            travelled = 0
            for table, key, column in (
                ("runs", "run_uuid", "artifact_uri"),
                ("logged_models", "model_id", "artifact_location"),
            ):
                entries = connection.execute(
                    f"SELECT {key}, {column} FROM {table} WHERE substr({column}, 1, ?) = ?", (len(prefix), prefix)
                ).fetchall()
                for entry, location in entries:
                    if _travelled(new_folder, location[len(prefix) :]):
                        new_location = root.rstrip("/") + "/" + location[len(prefix) :]
                        connection.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (new_location, entry))
                        travelled += 1
            if travelled or not old_folder.is_dir():
                connection.execute(
                    "UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?", (root, old)
                )
                moved.append(old)
    return moved


def init_store(uri: str | None = None) -> tuple[MlflowClient, str]:
    """Create the store and the experiment (with its description and kind) if missing; safe from parallel jobs.

    A sqlite store found in another folder than its artifacts were first kept beside (a copied
    or moved project) is re-pointed at its own ``mlartifacts/`` where the files prove the move
    (``relocate_artifacts``); one reached through a link keeps its runs where they are. Returns the client and
    the experiment id.
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
                    client.create_experiment,
                    name,
                    artifact_location=root,
                    tags={NOTE_TAG: EXPERIMENT_NOTE, KIND_TAG: EXPERIMENT_KIND},
                )
            else:
                experiment_id = experiment.experiment_id
                if db is not None and root is not None and experiment.artifact_location != root:
                    moved = with_retry(relocate_artifacts, db, root)
                    if moved:
                        log.info("MLflow store %s: artifact locations %s re-pointed at %s", uri, ", ".join(moved), root)
                note = experiment.tags.get(NOTE_TAG, NOTE_PREFIX)
                if note != EXPERIMENT_NOTE and note.startswith(NOTE_PREFIX):  # none yet, or an older dawsol one
                    with_retry(client.set_experiment_tag, experiment_id, NOTE_TAG, EXPERIMENT_NOTE)
                if KIND_TAG not in experiment.tags:  # a store made before experiments had a kind
                    with_retry(client.set_experiment_tag, experiment_id, KIND_TAG, EXPERIMENT_KIND)
        except DawsolError:
            raise
        except Exception as exc:
            raise DawsolError(
                f"MLflow store {uri}: cannot open it ({str(exc).splitlines()[0]}); "
                "check MLFLOW_TRACKING_URI or pass --no-tracking"
            ) from exc
    return client, experiment_id
