"""``dawsol tracking ui``: the MLflow UI server on the project's store, in its own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from urllib.parse import quote

from dawsol.errors import DawsolError
from dawsol.tracking.store import artifact_root, tracking_uri
from dawsol.tracking.summary import RESULTS_VIEW


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


def browse_urls(host: str, port: int, experiment_id: str, table: tuple[str, str] | None = None) -> dict[str, str]:
    """Where a user starts in the UI: ``runs``, the experiment's runs in model-training mode; ``results``, the
    view a report saves (``summary.share_results_view``): its summary runs, the seed means as columns; and,
    given ``table`` (a run id and artifact path: ``summary.results_table``), ``table``: that logged table.

    MLflow 3's UI opens an experiment in GenAI mode (traces, no runs) unless the URL says
    ``workflowType=machine_learning`` or the browser remembers the toggle; the experiment's
    ``mlflow.experimentKind`` tag does not change that, and the UI's own links drop the URL's word (a run
    opened from the runs table is shown in GenAI mode): so every URL here carries it (docs/mlflow-ui.md).
    Only loopback or the given host is printed: a server on all addresses is opened on loopback.
    """
    base = f"http://{_browsable(host)}:{port}/#/experiments/{experiment_id}"
    mode = "workflowType=machine_learning"
    urls = {"runs": f"{base}/runs?{mode}", "results": f"{base}/runs?{mode}&viewStateShareKey={quote(RESULTS_VIEW)}"}
    if table is not None:
        run_id, path = table
        urls["table"] = f"{base}/runs/{run_id}/artifacts/{quote(path)}?{mode}"
    return urls


def _browsable(host: str) -> str:
    """The address a browser on this machine opens for a server listening on ``host`` (IPv6 in brackets)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def serve_environment() -> dict[str, str]:
    """The environment of ``mlflow ui``: MLflow's telemetry off (the server then tells the UI to send no usage
    data) unless ``MLFLOW_DISABLE_TELEMETRY`` says otherwise, and MLflow's job runner (GenAI scorers and trace
    rollups, which dawsol never uses: up to 10 more processes and a slower start) off unless
    ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set."""
    return {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),
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
