"""`benchmarks/gpu_check.py` on a machine without CUDA: every part skipped with its reason, one JSON object, exit 0;
and its test part's plan (node ids, JUnit counting) works wherever it runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the check runs for minutes: run it by hand")
def test_without_cuda_every_part_is_skipped_saying_why(tmp_path: Path) -> None:
    output = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(output)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert json.loads(output.read_text()) == report
    assert report["environment"]["cuda"] is False and report["ok"] is True
    assert set(report["parts"]) == {"tests", "bench_methods", "bench_throughput", "bench_throughput_bf16", "estimate"}
    for part in report["parts"].values():
        assert part["status"] == "skipped" and "no CUDA device" in part["reason"]
    for script in ("bench_methods.py", "bench_throughput.py"):
        assert f"benchmarks/{script}" in json.dumps(report) and (ROOT / "benchmarks" / script).is_file()
    assert "every part skipped" in proc.stderr


@pytest.mark.slow
def test_the_test_part_runs_its_cuda_tests_and_counts_them(tmp_path: Path) -> None:
    """The prepared pytest command names tests that exist; its JUnit report is counted (here: CUDA tests skipped)."""
    check = gpu_check()
    junit = tmp_path / "tests.xml"
    part = check.parts(sys.executable, junit)["tests"]
    result = check.run_part("tests", part, 300, junit)
    assert result["status"] == "passed", result.get("tail")
    counts = result["result"]
    assert not counts["failed"]
    gpu_only = [s for s in counts["skipped"] if "test_gpu" in s["test"]]
    if not torch.cuda.is_available():
        assert len(gpu_only) == 3 and all("needs a CUDA device" in s["reason"] for s in gpu_only)
        assert counts["passed"] >= 2  # the device-selection and one-process tests run on the CPU too
