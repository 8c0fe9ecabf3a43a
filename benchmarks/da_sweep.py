"""Benchmark: does DA-WSOL beat CAM on the synthetic benchmark under other settings? A sweep, seed 0.

Each variant is a project of its own (a params.yaml = the project's, deep-merged with the
variant's overrides, and its own prepared data) in which ``dawsol train`` and ``dawsol evaluate``
run the variant's cells without tracking, on one thread each as the pipeline's jobs do (CPU
results depend on the thread count), ``--jobs`` variants side by side. For each cell it reports
val and test MaxBoxAccV2 and PxAP, Top-1 Cls, and for DA cells where the assigner put
ground-truth object and background pixels (``TSA`` in metrics.json).

The variants cover the DA settings (start epoch, anchor update, the loss weights, L_u off), the
benchmark's knobs (object size, body class signal, context leakage) and a backbone pretrained on
a body-labelled variant of the benchmark (the synthetic counterpart of ImageNet pretraining:
classes told apart by the body's colour, a tiny part, random context), fine-tuned through
``model.pretrained: <checkpoint>``.

Usage (from the project root):
``python benchmarks/da_sweep.py [--variants default,pretrained] [--workdir DIR] [--output sweep.json]``.
Prints one JSON object; about 2 minutes per cell and core (``--list`` names the variants).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dawsol.atomic import atomic_write_text  # noqa: E402
from dawsol.config import deep_merge  # noqa: E402

CAM, MMD = "synthetic/resnet18/cam-none/seed0", "synthetic/resnet18/cam-mmd/seed0"
BIG_OBJECTS = {"object_scale": [0.6, 0.9], "max_objects": 1}
# classes told apart by the body: full body class signal, a tiny part, random context
BODY_LABELLED = {"seed": 1, "part_scale": 0.1, "body_class_signal": 0.5, "context_prob": 0.125}
PRETRAINED = "pretrained"  # the placeholder for the body-labelled pretraining checkpoint
FINE_TUNE = {"datasets": {"synthetic": {"train": {"lr": 0.001}}}}

# name -> (params overrides, cells)
VARIANTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "default": ({}, [CAM, MMD]),
    "start_epoch_5": ({"datasets": {"synthetic": {"da": {"start_epoch": 5}}}}, [MMD]),
    "anchor_true_target": ({"defaults": {"da": {"anchor_update": "true_target"}}}, [MMD]),
    "lambda2_0.3": ({"defaults": {"da": {"mmd": {"lambda2": 0.3}}}}, [MMD]),
    "no_lu": ({}, ["synthetic/resnet18/cam-mmd_nolu/seed0"]),
    "big_objects": ({"synthetic": BIG_OBJECTS}, [CAM, MMD]),
    "body_signal_0.35": ({"synthetic": {"body_class_signal": 0.35}}, [CAM, MMD]),
    "context_0.5": ({"synthetic": {"context_prob": 0.5}}, [CAM, MMD]),
    "all_three": ({"synthetic": {**BIG_OBJECTS, "body_class_signal": 0.35, "context_prob": 0.5}}, [CAM, MMD]),
    "pretrained": (deep_merge(FINE_TUNE, {"defaults": {"model": {"pretrained": PRETRAINED}}}), [CAM, MMD]),
}


def run_dawsol(project: Path, *args: str) -> None:
    """``python -m dawsol ARGS`` in ``project``; a failure ends the sweep with its stderr."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "dawsol", *args], cwd=project, env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"{project}: dawsol {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def make_project(folder: Path, base: Path, overrides: dict[str, Any]) -> Path:
    """A project folder: the ``base`` params.yaml with ``overrides``, and its data prepared."""
    folder.mkdir(parents=True, exist_ok=True)
    params = deep_merge(yaml.safe_load(base.read_text()), overrides)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_dawsol(folder, "prepare", "synthetic")
    return folder


def run_cell(project: Path, cell: str) -> dict[str, Any]:
    """Train and evaluate ``cell`` in ``project``; its metrics, rounded."""
    run_dawsol(project, "train", cell, "--no-tracking")
    run_dawsol(project, "evaluate", cell, "--no-tracking")
    splits = json.loads((project / "results" / "cells" / cell / "metrics.json").read_text())["splits"]
    row: dict[str, Any] = {}
    for split, metrics in splits.items():
        row[split] = {key: round(metrics[key], 1) for key in ("MaxBoxAccV2", "PxAP", "Top-1 Cls")}
        if "TSA" in metrics:
            row[split]["TSA"] = {
                group: {name: round(share, 1) for name, share in shares.items()}
                for group, shares in metrics["TSA"].items()
            }
    return row


def pretraining_checkpoint(workdir: Path, base: Path) -> Path:
    """CAM trained on the body-labelled variant of the benchmark: the pretrained backbone's checkpoint."""
    project = workdir / "pretraining"
    checkpoint = project / "runs" / CAM / "checkpoint.pt"
    if not checkpoint.is_file():
        run_cell(make_project(project, base, {"synthetic": BODY_LABELLED}), CAM)
    return checkpoint.resolve()


def needs_pretraining(name: str) -> bool:
    return VARIANTS[name][0].get("defaults", {}).get("model", {}).get("pretrained") == PRETRAINED


def run_variant(workdir: Path, base: Path, name: str) -> dict[str, Any]:
    overrides, cells = VARIANTS[name]
    if needs_pretraining(name):
        pretrained = {"defaults": {"model": {"pretrained": str(pretraining_checkpoint(workdir, base))}}}
        overrides = deep_merge(overrides, pretrained)
    project = make_project(workdir / name, base, overrides)
    result = {cell: run_cell(project, cell) for cell in cells}
    print(json.dumps({name: result}), file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the variants' projects here (default: temp)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the params.yaml variants start from")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="variants run side by side")
    parser.add_argument("--list", action="store_true", help="print the variants and their overrides, run nothing")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.list:
        print(json.dumps({name: {"overrides": o, "cells": c} for name, (o, c) in VARIANTS.items()}, indent=2))
        return {}
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    with tempfile.TemporaryDirectory(prefix="dawsol-sweep-") as scratch:
        workdir = (args.workdir or Path(scratch)).resolve()
        base = args.params.resolve()
        if any(needs_pretraining(name) for name in names):
            pretraining_checkpoint(workdir, base)  # once, before the variants that share it
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda name: run_variant(workdir, base, name), names))
        report = {"benchmark": "da_sweep", "seed": 0, "variants": dict(zip(names, results, strict=True))}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        atomic_write_text(args.output, text + "\n")
    return report


if __name__ == "__main__":
    main()
