"""Everything that needs a CUDA device, in one command of a few minutes, printed as one JSON object.

For the day a GPU machine is lent (docs/benchmarks.md, "On a GPU"): each part runs as its own process with
its own time limit, so a hang or a crash in one still reports the others.

1. ``tests``: the CUDA-only tests, ``tests/test_gpu.py`` (bf16 and channels_last training, a cell
   trained and evaluated on the GPU, NCCL in one process, SyncBatchNorm under DDP), and the CUDA
   branches of the device-selection and one-process tests; counts, failures and skip reasons.
2. ``bench_methods``: ``benchmarks/bench_methods.py`` (a DA-WSOL step against a CAM step, the
   batched assigner), on the CPU and on CUDA; ``cuda_step`` is its CUDA half.
3. ``bench_throughput``: ``benchmarks/bench_throughput.py`` on CUDA, float32 and bf16 with
   channels_last: training and evaluation images/s per backbone.
4. ``estimate``: ``dawsol estimate --profile paper --device cuda``, the paper grid's device-hours.

Without CUDA every part is skipped, each saying why, and the exit code is 0; otherwise it is 1
when a part failed or ran out of time. Usage (from the project root):
``python benchmarks/gpu_check.py [--output gpu_check.json] [--budget 280]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

# the tests that need CUDA: skipped without it (tests/test_gpu.py) or taking another branch on it
CUDA_TESTS = (
    "tests/test_gpu.py",
    "tests/test_train.py::test_device_selection",
    "tests/test_distributed.py::test_one_process_never_relaunches_and_small_last_batches_are_whole",
)
THROUGHPUT_BACKBONES = ("resnet50", "vgg16", "inception_v3")
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False): skipped, run this on a GPU machine"


def parts(python: str, junit: Path) -> dict[str, dict[str, Any]]:
    """Each part's command and time limit (seconds), in the order they run."""
    throughput = [python, "benchmarks/bench_throughput.py", "--device", "cuda", "--steps", "3", "--backbones"]
    pytest = [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    estimate = [python, "-m", "dawsol", "estimate", "--profile", "paper", "--device", "cuda", "--steps", "2"]
    return {
        "tests": {"command": [*pytest, *CUDA_TESTS], "limit": 130},
        "bench_methods": {
            "command": [python, "benchmarks/bench_methods.py", "--steps", "10", "--warmup", "2", "--repeats", "1"],
            "limit": 50,
        },
        "bench_throughput": {"command": [*throughput, *THROUGHPUT_BACKBONES], "limit": 40},
        "bench_throughput_bf16": {
            "command": [*throughput, *THROUGHPUT_BACKBONES, "--bf16", "--channels-last"],
            "limit": 40,
        },
        "estimate": {"command": [*estimate, "--json"], "limit": 60},
    }


def environment() -> dict[str, Any]:
    """The device, torch and CUDA this check runs on."""
    cuda = torch.cuda.is_available()
    found: dict[str, Any] = {"torch": torch.__version__, "cuda": cuda, "cuda_version": torch.version.cuda}
    if cuda:
        found.update(
            device_name=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            device_count=torch.cuda.device_count(),
            bf16_supported=torch.cuda.is_bf16_supported(),
            nccl=torch.distributed.is_available() and torch.distributed.is_nccl_available(),
        )
    return found


def _json_of(text: str) -> Any:
    """The JSON object a benchmark printed (its whole stdout, or from its first ``{``)."""
    try:
        return json.loads(text)
    except ValueError:
        start = text.find("{")
        return json.loads(text[start:]) if start >= 0 else None


def _test_counts(junit: Path) -> dict[str, Any]:
    """Passed, failed and skipped tests (with the failures' and skips' names and reasons) from pytest's JUnit XML."""
    counts: dict[str, Any] = {"passed": 0, "failed": [], "skipped": []}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            counts["failed"].append({"test": name, "message": (problem.get("message") or "")[:300]})
        elif skipped is not None:
            counts["skipped"].append({"test": name, "reason": skipped.get("message")})
        else:
            counts["passed"] += 1
    return counts


def run_part(name: str, part: dict[str, Any], limit: float, junit: Path) -> dict[str, Any]:
    """Run one part within ``limit`` seconds: its status, seconds and result (or the tail of its output)."""
    report: dict[str, Any] = {"command": " ".join(part["command"][1:]), "limit_s": round(limit)}
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    try:
        proc = subprocess.run(part["command"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        report.update(status="timed_out", tail=tail.decode(errors="replace") if isinstance(tail, bytes) else tail)
        report["seconds"] = round(time.monotonic() - started, 1)
        return report
    report["seconds"] = round(time.monotonic() - started, 1)
    if name == "tests":
        report["result"] = _test_counts(junit) if junit.is_file() else None
    else:
        try:
            report["result"] = _json_of(proc.stdout)
        except ValueError:
            report["result"] = None
    passed = proc.returncode == 0 and report["result"] is not None
    report["status"] = "passed" if passed else "failed"
    if not passed:
        report["tail"] = (proc.stdout + proc.stderr)[-2000:]
    if name == "bench_methods" and passed:
        report["cuda_step"] = [row for row in report["result"].get("step", []) if str(row.get("device", "")) != "cpu"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=280, help="seconds for all parts together (default: 280)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these parts (tests, bench_methods, ...)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    started = time.monotonic()
    report: dict[str, Any] = {"environment": environment(), "parts": {}}
    cuda = report["environment"]["cuda"]
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch) / "tests.xml"
        for name, part in parts(sys.executable, junit).items():
            if args.only is not None and name not in args.only:
                continue
            left = args.budget - (time.monotonic() - started)
            command = " ".join(part["command"][1:])
            if not cuda:
                report["parts"][name] = {"status": "skipped", "reason": NO_CUDA, "command": command}
            elif left < 10:
                spent = f"the --budget of {args.budget:.0f} s was spent"
                report["parts"][name] = {"status": "not_run", "reason": spent}
            else:
                report["parts"][name] = run_part(name, part, min(part["limit"], left), junit)
    statuses = [part["status"] for part in report["parts"].values()]
    report["ok"] = all(status in ("passed", "skipped") for status in statuses)
    report["skipped"] = None if cuda else "no CUDA device: every part skipped"
    report["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_name(f".{args.output.name}.tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.output)
    if not cuda:
        print("gpu_check: no CUDA device, every part skipped", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
