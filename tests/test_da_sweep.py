"""The DA-vs-CAM sweep: every variant is valid settings, and a variant runs end to end at a tiny size."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from train_fixtures import tiny_params

from dawsol.config import deep_merge, load_params, resolve


def load_sweep(project_root: Path):
    spec = importlib.util.spec_from_file_location("da_sweep", project_root / "benchmarks" / "da_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_variant_resolves_its_cells(project_root: Path, tmp_path: Path) -> None:
    sweep = load_sweep(project_root)
    base = yaml.safe_load((project_root / "params.yaml").read_text())
    for name, (overrides, cells) in sweep.VARIANTS.items():
        params_file = tmp_path / f"{name}.yaml"
        params = deep_merge(base, overrides)
        if sweep.needs_pretraining(name):
            params["defaults"]["model"]["pretrained"] = "none"
        params_file.write_text(yaml.safe_dump(params))
        params = load_params(params_file)  # validated against the schema
        for cell in cells:
            resolve(cell, params, str(params_file))


@pytest.mark.slow
def test_the_pretrained_variant_runs_end_to_end(project_root: Path, tmp_path: Path) -> None:
    sweep = load_sweep(project_root)
    base = tmp_path / "tiny.yaml"
    base.write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    output = tmp_path / "sweep.json"
    work = tmp_path / "work"
    args = ["--variants", "pretrained", "--params", str(base), "--workdir", str(work), "--output", str(output)]
    report = sweep.main(args)
    assert json.loads(output.read_text()) == report
    cells = report["variants"]["pretrained"]
    assert set(cells) == {sweep.CAM, sweep.MMD}
    assert set(cells[sweep.CAM]["test"]) == {"MaxBoxAccV2", "PxAP", "Top-1 Cls"}
    tsa = cells[sweep.MMD]["val"]["TSA"]
    assert abs(sum(tsa["object_pixels"].values()) - 100.0) < 0.5
    fine_tuned = yaml.safe_load((work / "pretrained" / "params.yaml").read_text())
    checkpoint = Path(fine_tuned["defaults"]["model"]["pretrained"])
    assert checkpoint == (work / "pretraining" / "runs" / sweep.CAM / "checkpoint.pt").resolve()
    assert checkpoint.is_file()
