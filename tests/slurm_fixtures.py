"""A real single-node Slurm cluster in a temporary directory: munge, MariaDB, slurmdbd, slurmctld, slurmd.

Debian's packages (``.ci/run``: ``slurm-wlm slurmdbd munge mariadb-server``). ``sacct`` needs
slurmdbd, and slurmdbd needs MySQL/MariaDB (Slurm 22.05 has no file-based accounting storage;
``jobcomp/filetxt`` feeds no ``sacct``), and snakemake-executor-plugin-slurm polls ``sacct``: so
all five daemons run, as root, with every state directory, socket, log and port private to the
cluster's folder, and are stopped (SIGTERM, then SIGKILL) however the test ends. Processes are
tracked by ``proctrack/linuxproc`` with ``task/none``: containers seldom delegate cgroups.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

BINARIES = (
    "munged",
    "mariadbd",
    "mariadb-install-db",
    "mariadb",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sbatch",
    "sacct",
    "sacctmgr",
    "sinfo",
    "scontrol",
    "squeue",
    "srun",
    "scancel",
)
CLUSTER_NAME = "dawsoltest"
ACCOUNT = "dawsol"  # the Slurm account root submits under
PARTITIONS = ("cpu", "gpu")  # the partitions workflow/profiles/slurm asks for
DB_USER, DB_PASSWORD = "slurm", "dawsol-test"


def missing_binaries() -> list[str]:
    """The Slurm, munge and MariaDB programs not on PATH (or in /usr/sbin)."""
    search = f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin{os.pathsep}/sbin"
    return [name for name in BINARIES if shutil.which(name, path=search) is None]


def _binary(name: str) -> str:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin{os.pathsep}/sbin")
    assert path is not None, f"{name} not found"
    return path


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SlurmError(RuntimeError):
    """The cluster did not come up; the message carries the daemons' log tails."""


class SlurmCluster:
    """The daemons of a one-node cluster under ``root``; ``env`` points Slurm's clients at it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.db_socket = root / "db.sock"
        self.logs = root / "log"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.env["PATH"] = f"{root / 'bin'}{os.pathsep}{self.env.get('PATH', '')}{os.pathsep}/usr/sbin"

    # ---- life cycle

    def start(self, timeout: float = 120) -> None:
        """Write the configuration, start the daemons in order and wait until the node is idle."""
        for name in ("bin", "etc", "munge", "log", "db", "ctld", "slurmd"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self._write_srun()
        (self.root / "munge").chmod(0o700)
        ports = {name: _free_port() for name in ("db", "dbd", "ctld", "slurmd")}
        self._write_configs(ports)
        self._start_munge()
        self._start_database(ports["db"])
        self._spawn("slurmdbd", [_binary("slurmdbd"), "-D"])
        self._wait(lambda: self.call("sacctmgr", "-n", "list", "cluster").returncode == 0, "slurmdbd answers", 60)
        for entity in (
            ["cluster", CLUSTER_NAME],
            ["account", ACCOUNT, f"cluster={CLUSTER_NAME}"],
            ["user", "root", f"account={ACCOUNT}", f"cluster={CLUSTER_NAME}"],
        ):
            self.call("sacctmgr", "-i", "add", *entity, check=True)
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-i"])
        self._spawn("slurmd", [_binary("slurmd"), "-D", "-N", self.node])
        self._wait(self.node_idle, f"sinfo shows node {self.node} idle", timeout)

    def stop(self) -> None:
        """Cancel the jobs left (a failed test's), then SIGTERM every daemon, newest first; SIGKILL
        what is still there after 15 s."""
        if "slurmd" in self.processes and self.processes["slurmctld"].poll() is None:
            self._cancel_jobs()
        for name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=15)
            self.processes.pop(name)

    def _cancel_jobs(self, timeout: float = 60) -> None:
        def queued() -> list[str]:
            return self.call("squeue", "-h", "-o", "%i").stdout.split()

        try:
            if jobs := queued():
                self.call("scancel", "--full", *jobs)
                deadline = time.monotonic() + timeout
                while queued() and time.monotonic() < deadline:
                    time.sleep(1)
        except subprocess.TimeoutExpired:
            pass  # the daemons are stopped next either way

    # ---- clients

    def call(self, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster."""
        result = subprocess.run(
            [_binary(args[0]), *args[1:]], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise SlurmError(f"{' '.join(args)} failed: {result.stdout}{result.stderr}\n{self.log_tails()}")
        return result

    def node_idle(self) -> bool:
        """Whether ``sinfo`` shows the node idle."""
        result = self.call("sinfo", "-h", "-N", "-n", self.node, "-o", "%T")
        return result.returncode == 0 and result.stdout.split() != [] and result.stdout.split()[0] == "idle"

    def sacct(self, *args: str) -> list[dict[str, str]]:
        """``sacct`` rows (every job since the cluster started, requeued runs included with ``-D``)."""
        fields = ["JobIDRaw", "JobName", "Partition", "State", "ExitCode", "Comment"]
        result = self.call(
            "sacct", "-X", "-a", "-P", "-n", "--starttime", "now-1days", "-o", ",".join(fields), *args, check=True
        )
        return [dict(zip(fields, line.split("|"), strict=True)) for line in result.stdout.splitlines() if line]

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every daemon's log, for failure messages."""
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # ---- daemons

    def _spawn(self, name: str, args: list[str]) -> None:
        out = (self.logs / f"{name}.out").open("wb")
        self.processes[name] = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        time.sleep(0.2)
        if self.processes[name].poll() is not None:
            output = (self.logs / f"{name}.out").read_text(errors="replace")
            raise SlurmError(f"{name} exited at once:\n{output}\n{self.log_tails()}")

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for name, process in self.processes.items():
                if process.poll() is not None:
                    output = (self.logs / f"{name}.out").read_text(errors="replace")
                    raise SlurmError(f"{name} exited while waiting until {what}:\n{output}\n{self.log_tails()}")
            time.sleep(0.5)
        raise SlurmError(f"timed out after {timeout:.0f} s waiting until {what}\n{self.log_tails()}")

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge = self.root / "munge"
        self._spawn(
            "munged",
            [
                _binary("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--seed-file={munge / 'munged.seed'}",
                f"--log-file={self.logs / 'munged.log'}",
            ],
        )
        self._wait(self.munge_socket.exists, "munged listens", 30)

    def _start_database(self, port: int) -> None:
        datadir = self.root / "db"
        install = subprocess.run(
            [
                _binary("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={datadir}",
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if install.returncode != 0:
            raise SlurmError(f"mariadb-install-db failed:\n{install.stdout}{install.stderr}")
        self._spawn(
            "mariadbd",
            [
                _binary("mariadbd"),
                "--no-defaults",
                f"--datadir={datadir}",
                f"--socket={self.db_socket}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                "--user=root",
                f"--pid-file={self.root / 'mariadbd.pid'}",
                f"--log-error={self.logs / 'mariadbd.log'}",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=128M",
                "--innodb-lock-wait-timeout=900",
            ],
        )
        sql = (
            f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';"
            f"GRANT ALL ON *.* TO '{DB_USER}'@'127.0.0.1';"
        )
        client = [_binary("mariadb"), "--no-defaults", f"--socket={self.db_socket}", "-u", "root"]
        self._wait(
            lambda: subprocess.run([*client, "-e", "SELECT 1"], capture_output=True).returncode == 0,
            "MariaDB answers",
            60,
        )
        subprocess.run([*client, "-e", sql], check=True, capture_output=True)

    def _write_srun(self) -> None:
        """An ``srun`` first on the jobs' PATH that puts SLURM_CONF back.

        The jobstep plugin removes every SLURM_* variable but a few job ids before its ``srun``
        (snakemake-executor-plugin-slurm issue 164), SLURM_CONF included: fine on a real cluster,
        whose slurm.conf is where Slurm looks by default (or served configless by slurmctld), not
        for this one, whose slurm.conf lives in its temporary folder.
        """
        wrapper = self.root / "bin" / "srun"
        wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {_binary("srun")} "$@"\n')
        wrapper.chmod(0o755)

    def _write_configs(self, ports: dict[str, int]) -> None:
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        dbd = self.conf.with_name("slurmdbd.conf")
        dbd.write_text(
            auth
            + "\n".join(
                [
                    "DbdHost=localhost",
                    "DbdAddr=127.0.0.1",
                    f"DbdPort={ports['dbd']}",
                    "SlurmUser=root",
                    f"LogFile={self.logs / 'slurmdbd.log'}",
                    f"PidFile={self.root / 'slurmdbd.pid'}",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={ports['db']}",
                    f"StorageUser={DB_USER}",
                    f"StoragePass={DB_PASSWORD}",
                    "StorageLoc=slurm_acct_db",
                ]
            )
            + "\n"
        )
        dbd.chmod(0o600)
        cpus = os.cpu_count() or 1
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 3 // 4
        partitions = [
            f"PartitionName={name} Nodes={self.node} Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP"
            for i, name in enumerate(PARTITIONS)
        ]
        self.conf.write_text(
            auth
            + "\n".join(
                [
                    f"ClusterName={CLUSTER_NAME}",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmctldPort={ports['ctld']}",
                    f"SlurmdPort={ports['slurmd']}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"StateSaveLocation={self.root / 'ctld'}",
                    f"SlurmdSpoolDir={self.root / 'slurmd'}",
                    f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.logs / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/slurmdbd",
                    "AccountingStorageHost=127.0.0.1",
                    f"AccountingStoragePort={ports['dbd']}",
                    f"AccountingStoragePass={self.munge_socket}",  # the munge socket for slurmdbd's connections
                    "AccountingStoreFlags=job_comment",  # sacct's Comment: the plugin's "rule_<name>_wildcards_..."
                    "JobCompType=jobcomp/none",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "MailProg=/bin/true",
                    "KillWait=30",
                    "MinJobAge=600",
                    "InactiveLimit=0",
                    "SlurmctldTimeout=30",
                    "SlurmdTimeout=60",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
                    *partitions,
                ]
            )
            + "\n"
        )


@contextmanager
def slurm_cluster(root: Path) -> Iterator[SlurmCluster]:
    """A started cluster under ``root``, stopped on the way out whatever happened."""
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
