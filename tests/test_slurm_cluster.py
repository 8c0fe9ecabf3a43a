"""The Slurm profile against a real single-node cluster (tests/slurm_fixtures.py): a tiny grid, a requeue.

A CAM and a DA-WSOL-MMD cell run through ``snakemake --profile workflow/profiles/slurm`` (with the
small-node override of docs/cluster.md) with snakemake-executor-plugin-slurm; the DA-WSOL cell's
train job is requeued by ``scontrol requeue`` mid-epoch, Slurm runs it again and ``dawsol train``
resumes from its checkpoint. Every job is in ``sacct``, and both cells' ``metrics.json`` equal
the same cells run locally (``snakemake --cores``) in another copy of the project.

Outside CI the test skips when Slurm's programs are missing; under CI=true it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from slurm_fixtures import ACCOUNT, SlurmCluster, SlurmError, missing_binaries, slurm_cluster
from workflow_fixtures import BIN, copy_project

CELLS = ("synthetic/resnet18/cam-none/seed0", "synthetic/resnet18/cam-mmd/seed0")
REQUEUED_CELL = CELLS[1]
PROFILE = "workflow/profiles/slurm"
PACKAGES = "slurm-wlm slurmdbd munge mariadb-server"  # Debian's, as .ci/run installs them
OVERRIDE = "small-node.yaml"
T = TypeVar("T")


def require_slurm() -> None:
    """Skip when this machine cannot run the test cluster; under CI=true fail instead (never a silent skip)."""
    missing = missing_binaries()
    reason = None
    if missing:
        reason = f"the Slurm test cluster needs {', '.join(missing)} (Debian packages: {PACKAGES}, as .ci/run installs)"
    elif os.geteuid() != 0:
        reason = "the Slurm test cluster runs its daemons as root"
    if reason and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running one-node cluster for the module, stopped (jobs cancelled, daemons killed) however it ends."""
    require_slurm()
    try:
        with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
            yield cluster
    except SlurmError as exc:
        pytest.fail(f"the Slurm test cluster did not start: {exc}")


def test_missing_slurm_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # sbatch, sacct, srun ... not found
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI=true but the Slurm test cluster needs .*sbatch"):
        require_slurm()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="slurm-wlm slurmdbd munge mariadb-server"):
        require_slurm()


def make_tiny(project: Path) -> None:
    """A CAM and a DA-WSOL-MMD cell, 2 epochs of 24 batches of 64 px images, validation at the end."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synthetic"].update(train_per_class=12, val_per_class=2, test_per_class=2)
    params["datasets"]["synthetic"]["train"].update(epochs=2, batch_size=4, eval_every=2)
    params["datasets"]["synthetic"]["da"]["start_epoch"] = 0
    params["datasets"]["synthetic"]["data"].update(image_size=64, resize_size=72)
    params["datasets"]["synthetic"]["eval"]["cam_methods"] = ["cam"]
    params["defaults"]["eval"]["cam_curve_interval"] = 0.01
    params["grid"].update(backbones=["resnet18"], da=["none", "mmd"], seeds=[0])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def write_override(project: Path) -> Path:
    """The small-node override of docs/cluster.md, from the profile itself: its partitions, 1 CPU, no GPU."""
    base = yaml.safe_load((project / PROFILE / "config.v8+.yaml").read_text())
    small = {"cpus_per_task": 1, "mem_mb": 1000}
    override = {
        "default-resources": {**base["default-resources"], **small, "slurm_account": ACCOUNT},
        "set-threads": dict.fromkeys(base["set-threads"], 1),
        "set-resources": {
            rule: {**resources, **small, **({"gpu": 0} if "gpu" in resources else {})}
            for rule, resources in base["set-resources"].items()
        },
        "slurm-init-seconds-before-status-checks": 2,
    }
    path = project / OVERRIDE
    path.write_text(yaml.safe_dump(override, sort_keys=False))
    return path


def start_snakemake(project: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    env = {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    log = (project / "snakemake.out").open("w")
    return subprocess.Popen(
        [str(BIN / "snakemake"), *args],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a failed test stops its jobs too
    )


def finish(process: subprocess.Popen[str], project: Path, timeout: float, cluster: SlurmCluster | None = None) -> None:
    """Wait for a snakemake run; fail with its output (and the cluster's logs) unless it succeeded."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    output = (project / "snakemake.out").read_text(errors="replace")
    logs = cluster.log_tails() if cluster is not None else ""
    assert process.returncode == 0, (
        f"snakemake in {project.name} failed ({process.returncode}):\n{output[-6000:]}\n{logs}"
    )


def wait_for(condition: Callable[[], T], what: str, timeout: float, *processes: subprocess.Popen[str]) -> T:
    """Poll ``condition`` until it is true and return it; fail on ``timeout`` or when a process ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert all(p.poll() is None for p in processes), f"snakemake ended while waiting for {what}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def running_job(slurm: SlurmCluster, rule: str, cell: str) -> str | None:
    """The id of the running Slurm job of ``rule`` for ``cell`` (the plugin's job comment names both)."""
    listing = slurm.call("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k", check=True).stdout
    comment = f"rule_{rule}_wildcards_{cell.replace('/', '_')}"
    return next((line.split("|")[0] for line in listing.splitlines() if line.endswith(f"|{comment}")), None)


def comparable(project: Path, cell: str) -> dict:
    """A cell's metrics.json less ``code`` (the source version, the same checkout for both runs),
    and its per-epoch losses (less the timing)."""
    result = json.loads((project / "results/cells" / cell / "metrics.json").read_text())
    result.pop("code")
    log = (project / "runs" / cell / "train_log.jsonl").read_text().splitlines()
    result["epochs"] = [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in log]
    return result


@pytest.mark.cluster
def test_slurm_grid_with_requeue_equals_local_run(slurm: SlurmCluster, tmp_path: Path, project_root: Path) -> None:
    cluster_project = copy_project(project_root, tmp_path / "cluster")
    local_project = copy_project(project_root, tmp_path / "local")
    targets = [f"results/cells/{cell}/metrics.json" for cell in CELLS]
    for project in (cluster_project, local_project):
        make_tiny(project)
    write_override(cluster_project)
    started = time.monotonic()
    on_slurm = start_snakemake(cluster_project, ["--profile", PROFILE, "--profile", OVERRIDE, *targets], slurm.env)
    # the reference: the same cells with the same seeds, locally, alongside (both use one thread per job)
    local = start_snakemake(local_project, ["--cores", "2", *targets], dict(os.environ))
    try:
        train_log = cluster_project / "logs/train" / f"{REQUEUED_CELL}.log"
        first_batch = re.compile(r"epoch 1 batch \d+/24")
        wait_for(
            lambda: train_log.is_file() and first_batch.search(train_log.read_text(errors="replace")),
            f"{REQUEUED_CELL} training in epoch 1 on Slurm",
            600,
            on_slurm,
        )
        job = wait_for(lambda: running_job(slurm, "train", REQUEUED_CELL), "its running train job in squeue", 60)
        slurm.call("scontrol", "requeue", job, check=True)
        # Slurm holds a requeued job ~2 minutes (its begin time is moved ahead); let it start at once
        wait_for(lambda: slurm.call("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() == "PENDING", "requeue", 120)
        slurm.call("scontrol", "update", f"JobId={job}", "StartTime=now", check=True)
        finish(on_slurm, cluster_project, timeout=900, cluster=slurm)
        finish(local, local_project, timeout=600)
    finally:
        for process in (on_slurm, local):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    print(f"slurm run + local run: {time.monotonic() - started:.0f} s")

    # every job of the run is in sacct (the job name is the run's id), the requeued one twice
    rows = slurm.sacct("-D")
    print("\n".join("|".join(row.values()) for row in rows))
    assert len({row["JobName"] for row in rows}) == 1, rows
    jobs = sorted(
        (row["Comment"].split("_wildcards_")[0], row["Partition"]) for row in rows if row["State"] == "COMPLETED"
    )
    assert jobs == [
        ("rule_evaluate", "gpu"),
        ("rule_evaluate", "gpu"),
        ("rule_prepare_synthetic", "cpu"),
        ("rule_train", "gpu"),
        ("rule_train", "gpu"),
    ], rows  # the profile's partitions
    assert [row["State"] for row in rows if row["JobIDRaw"] == job] == ["REQUEUED", "COMPLETED"], rows
    resumed = re.search(r"resuming from \S+ \(epoch 1, batch (\d+)\)", train_log.read_text(errors="replace"))
    assert resumed and 0 < int(resumed.group(1)) < 24, train_log.read_text(errors="replace")

    for cell in CELLS:
        assert comparable(cluster_project, cell) == comparable(local_project, cell), cell
