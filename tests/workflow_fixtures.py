"""Cell result files as `dawsol train` / `dawsol evaluate` write them, for the report's tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from dawsol.config import Cell
from dawsol.data.metadata import SplitMetadata, write_split

METRIC_NAMES = ("Top-1 Cls", "Top-1 Loc", "GT-known Loc", "MaxBoxAccV2", "PxAP", "pIoU")
IMAGE_IDS = [f"test/img{i}.png" for i in range(4)]
CAM_SIZE = 16
CODE = {"dawsol": "0.1.0", "git_commit": "a" * 40, "git_dirty": False}


def write_dataset(dataset_dir: Path) -> None:
    """A 4-image test split with boxes: images, metadata."""
    rng = np.random.default_rng(0)
    for image_id in IMAGE_IDS:
        path = dataset_dir / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    meta = SplitMetadata(
        image_ids=IMAGE_IDS,
        labels=dict.fromkeys(IMAGE_IDS, 0),
        sizes=dict.fromkeys(IMAGE_IDS, (48, 40)),
        boxes={i: [(4, 5, 30, 33)] for i in IMAGE_IDS},
    )
    write_split(dataset_dir / "metadata" / "test", meta)


def cell_value(cell: Cell, metric: str) -> float:
    """A known metric value: methods differ by 10, seeds by 1, metrics by 0.5."""
    method_offset = {"none": 0.0, "mmd": 10.0, "dann": 5.0}[cell.da]
    return 40.0 + method_offset + cell.seed + 0.5 * METRIC_NAMES.index(metric)


def write_cell(root: Path, cell: Cell, epochs: int = 3, code: dict | None = None) -> None:
    """metrics.json, curves.csv, cams.png, cam_samples.npz and train_log.jsonl of one cell under ``root``;
    ``code``: the code version that trained and evaluated it (default: one fixed version)."""
    cell_dir = root / "results" / "cells" / cell.name
    cell_dir.mkdir(parents=True, exist_ok=True)
    split = {name: cell_value(cell, name) for name in METRIC_NAMES}
    split.update({"num_images": 4, "iou_thresholds": [30, 50, 70], "BoxAcc": {"30": 1.0, "50": 1.0, "70": 1.0}})
    metrics = {
        **cell.record(),
        "settings_digest": "0" * 16,
        "code": {"trained": code or CODE, "evaluated": code or CODE},
        "splits": {"val": split, "test": split},
    }
    (cell_dir / "metrics.json").write_text(json.dumps(metrics))
    lines = ["split,threshold,BoxAcc_30,BoxAcc_50,BoxAcc_70,precision,recall,IoU"]
    for split_name in ("val", "test"):
        for t in np.linspace(0, 0.99, 12):
            lines.append(
                f"{split_name},{t:.3f},{90 - 50 * t},{80 - 60 * t},{50 - 40 * t},{40 + 50 * t},{100 - 90 * t},{30}"
            )
    (cell_dir / "curves.csv").write_text("\n".join(lines) + "\n")
    cv2.imwrite(str(cell_dir / "cams.png"), np.zeros((8, 8, 3), np.uint8))
    yy, xx = np.mgrid[0:CAM_SIZE, 0:CAM_SIZE]
    cams = np.stack([np.exp(-((xx - 4 - k) ** 2 + (yy - 8) ** 2) / 20.0) for k in range(len(IMAGE_IDS))])
    np.savez(cell_dir / "cam_samples.npz", image_ids=np.array(IMAGE_IDS), cams=cams.astype(np.float16))
    run_dir = root / "runs" / cell.name
    run_dir.mkdir(parents=True, exist_ok=True)
    log = []
    for epoch in range(1, epochs + 1):
        val = {"MaxBoxAccV2": 50.0 + epoch, "PxAP": 40.0 + epoch} if epoch == epochs else None
        log.append(
            {
                "epoch": epoch,
                "lr": 0.01,
                "loss": 2.0 / epoch,
                "loss_c": 1.5 / epoch,
                "loss_d": 0.3,
                "loss_u": 0.2,
                "train_acc": 30.0 + 10 * epoch,
                "images_per_s": 100.0,
                "val": val,
            }
        )
    (run_dir / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))


BIN = Path(sys.executable).parent
COPIED = (
    "Snakefile",
    "params.yaml",
    "dvc.yaml",
    ".gitignore",
    ".dvcignore",
    "workflow",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvc/plots",
)


def copy_project(source: Path, target: Path) -> Path:
    """The files the workflows read, copied into ``target`` (the dawsol package is installed)."""
    for name in COPIED:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, target / name)
        elif path.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / name)
    return target


def run_tool(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a tool of the virtual environment (snakemake, dvc, dawsol) in ``cwd``; fail with its output."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def dry_run_jobs(output: str) -> dict[str, int]:
    """The job-stats table of a Snakemake dry run: rule -> count."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts
