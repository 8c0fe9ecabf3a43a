"""The methods benchmark runs end to end at a tiny size and writes machine-readable JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sklearn")


@pytest.mark.slow
def test_bench_methods_writes_json(project_root: Path, tmp_path: Path):
    spec = importlib.util.spec_from_file_location("bench_methods", project_root / "benchmarks" / "bench_methods.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    output = tmp_path / "bench.json"
    tiny = ["--steps", "2", "--warmup", "0", "--assigner-images", "3", "--assigner-side", "4", "--assigner-dim", "8"]
    report = bench.main([*tiny, "--repeats", "1", "--output", str(output)])
    assert json.loads(output.read_text()) == report
    step = report["step"][0]
    assert step["device"] == "cpu" and step["cam_step_s"] > 0 and step["da_step_s"] > 0
    assert step["ratio"] == pytest.approx(step["da_step_s"] / step["cam_step_s"], rel=1e-2)
    assert step["images"] == "random" or step["images"].endswith("/train")
    cases = {case["features"]: case for case in report["assigner"]}
    assert {"synthetic", "slow"} <= set(cases) <= {"synthetic", "model", "slow"}
    for case in cases.values():
        assert case["images"] == 3 and case["kmeans3_cpu_s"] > 0 and case["sklearn_mean_iterations"] >= 1
    assert 0.9 <= cases["synthetic"]["label_agreement_with_sklearn"] <= 1.0
