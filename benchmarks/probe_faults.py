"""A probe of bad inputs and faults as a user meets them: each case runs a ``dawsol`` command in a fresh copy of a
tiny prepared project and is classed as refused in one line, a traceback, or accepted (exit 0). A case marked
``must_refuse`` that is accepted is a silent wrong result. A ``snakemake -n`` case is refused in one line when
dawsol's line is all it prints. A leftover case (what a killed command leaves) is a silent wrong result when the
next run of the same command keeps the leftover. Prints one JSON object: the counts and every case.

Run: ``python benchmarks/probe_faults.py`` (a few minutes on two cores; no training).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "tests"))
from train_fixtures import prepare_tiny_data, write_project  # noqa: E402

SNAKEMAKE = Path(sys.executable).parent / "snakemake"

CELL = "synthetic/resnet18/cam-none/seed0"
TEST = Path("data/synthetic/metadata/test")


def _edit(path: str, change: Callable[[str], str]) -> Callable[[Path], None]:
    def harm(project: Path) -> None:
        target = project / path
        target.write_text(change(target.read_text()))

    return harm


def _replace(old: str, new: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return change


def _leftovers(*paths: str, damage: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """What a killed command leaves: the staging folders (or temporary files) ``paths``, after ``damage``."""

    def harm(project: Path) -> None:
        if damage is not None:
            damage(project)
        for path in paths:
            target = project / path
            if target.suffix == ".tmp":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"half")
            else:
                target.mkdir(parents=True)
                (target / "half.npy").write_bytes(b"half")

    return harm


def _checkpoint(damage: str) -> Callable[[Path], None]:
    def harm(project: Path) -> None:
        from dawsol.checkpoints.format import imported_state, save_checkpoint
        from dawsol.config import load_params, resolve
        from dawsol.models import build_model

        settings = resolve(CELL, load_params(project / "params.yaml"), project / "params.yaml")
        model = build_model(
            settings.model.__class__(**{**settings.model.__dict__, "pretrained": "none"}), 3, settings.wsol
        )
        state = imported_state(settings, model, {"source": "probe"})
        path = project / "runs" / CELL / "checkpoint.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if damage == "text":
            path.write_text("not weights")
            return
        if damage == "nan":
            state["model"]["classifier.weight"].fill_(float("nan"))
        if damage == "head":
            state["num_classes"] = 4
            state["model"]["classifier.weight"] = torch.zeros(4, *state["model"]["classifier.weight"].shape[1:])
            state["model"]["classifier.bias"] = torch.zeros(4)
        save_checkpoint(path, state)

    return harm


def _image(mode: str) -> Callable[[Path], None]:
    def harm(project: Path) -> None:
        first = (project / TEST / "image_ids.txt").read_text().splitlines()[0]
        target = project / "data/synthetic" / first
        size = Image.open(target).size
        pixels = np.full(size[::-1], 0.5 if mode == "F" else 3000, dtype=np.float32 if mode == "F" else np.int32)
        Image.fromarray(pixels).save(target.with_suffix(".tiff"))
        target.with_suffix(".tiff").rename(target)

    return harm


def _first_line_dup(text: str) -> str:
    lines = text.splitlines()
    return "\n".join([*lines, lines[0]])


def _box_outside(text: str) -> str:
    lines = text.splitlines()
    lines[0] = lines[0].split(",")[0] + ",0,0,9999,9999"
    return "\n".join(lines)


EVALUATE = ["evaluate", CELL, "--no-tracking", "-q"]
METRICS = ["metrics", "--metadata", str(TEST), "--baseline", "center", "--out", "m.json", "-q"]
RESOLVE = ["resolve", CELL, "-q"]
DRY_RUN = ["snakemake", "-n", "--cores", "1"]
CAMS = ["cams", "--checkpoint", f"runs/{CELL}/checkpoint.pt", "--method", "cam", "--split", "val", "--out", "maps/cam"]
EPOCHS = "    epochs: 50\n"  # defaults.train.epochs as write_project dumps it
SEEDS = "  seeds:\n  - 0\n  - 1\n  - 2\n"  # grid.seeds as write_project dumps it
EXTRA_GRID = "grid: {datasets: [synthetic], backbones: [resnet18], wsol: [cam], da: [none], seeds: [0]}\n"
# leftover cases: the paths that must be gone after the next run of the same command
LEFTOVERS = {
    "killed prepare's build": ["data/.synthetic.build-killed"],
    "killed cams' staging and old folders": ["maps/.cam.staging-killed", "maps/.cam.old-killed"],
    "killed evaluate's temporary file": [f"results/cells/{CELL}/.metrics.json.killed.tmp"],
}
# broken params files that both front doors refuse, a dawsol command and a snakemake dry run: (name, damage, the
# dawsol command; an empty grid shows in the grid's cells, not in one cell's settings)
BROKEN_PARAMS: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("YAML syntax error", _edit("params.yaml", lambda t: t + "\n  bad: [unclosed\n"), RESOLVE),
    ("duplicate top-level key", _edit("params.yaml", lambda t: t + EXTRA_GRID), RESOLVE),
    ("duplicate nested key", _edit("params.yaml", _replace(EPOCHS, EPOCHS + "    epochs: 5\n")), RESOLVE),
    ("empty grid", _edit("params.yaml", _replace(SEEDS, "  seeds: []\n")), ["cells", "-q"]),
]
# (category, name, damage or None, command, must_refuse)
CASES: list[tuple[str, str, Callable[[Path], None] | None, list[str], bool]] = [
    ("settings", "cam_curve_interval 1e-9", None, [*RESOLVE, "eval.cam_curve_interval=1e-9"], True),
    ("settings", "train.lr .nan", None, [*RESOLVE, "train.lr=.nan"], True),
    ("settings", "train.lr .inf", None, [*RESOLVE, "train.lr=.inf"], True),
    ("settings", "batch size 10^6", None, [*RESOLVE, "train.batch_size=1000000"], True),
    ("settings", "image size 10^5", None, [*RESOLVE, "data.image_size=100000"], True),
    ("settings", "unknown key", None, [*RESOLVE, "train.lrr=0.1"], True),
    ("settings", "metrics --size 10^5", None, [*METRICS, "--size", "100000"], True),
    ("data", "duplicate id", _edit(str(TEST / "image_ids.txt"), _first_line_dup), METRICS, True),
    ("data", "box outside the image", _edit(str(TEST / "localization.txt"), _box_outside), METRICS, True),
    ("data", "empty localization.txt", _edit(str(TEST / "localization.txt"), lambda _: ""), METRICS, True),
    ("data", "empty class_labels.txt", _edit(str(TEST / "class_labels.txt"), lambda _: ""), METRICS, True),
    ("data", "float image (validate)", _image("F"), ["validate", "data/synthetic", "-q"], True),
    ("data", "32-bit image (validate)", _image("I"), ["validate", "data/synthetic", "-q"], True),
    ("checkpoints", "text file (evaluate)", _checkpoint("text"), EVALUATE, True),
    ("checkpoints", "NaN weights (evaluate)", _checkpoint("nan"), EVALUATE, True),
    ("checkpoints", "other class count (evaluate)", _checkpoint("head"), EVALUATE, True),
    (
        "checkpoints",
        "text file (inspect)",
        _checkpoint("text"),
        ["import-checkpoint", f"runs/{CELL}/checkpoint.pt", "--inspect", "-q"],
        True,
    ),
    ("checkpoints", "sound checkpoint (evaluate)", _checkpoint("none"), EVALUATE, False),
    (
        "score maps",
        "missing score-map folder",
        None,
        ["metrics", "--metadata", str(TEST), "--cams", "nope", "--out", "m.json", "-q"],
        True,
    ),
    (
        "filesystem",
        "--out under a file",
        _edit("params.yaml", lambda t: t),
        [*METRICS[:-3], "--out", "params.yaml/m.json", "-q"],
        True,
    ),
    ("filesystem", "settings --out-dir under a file", None, ["settings", "--out-dir", "params.yaml/runs", "-q"], True),
    ("front doors", "unknown profile", None, [*RESOLVE, "--profile", "nope"], True),
    ("front doors", "missing params file", None, [*RESOLVE, "--params", "nope.yaml"], True),
    *[("front doors", name, harm, command, True) for name, harm, command in BROKEN_PARAMS],
    ("snakemake", "unknown profile", None, [*DRY_RUN, "--config", "profile=nope"], True),
    ("snakemake", "unknown key", _edit("params.yaml", _replace(EPOCHS, "    epoch: 50\n")), DRY_RUN, True),
    ("snakemake", "bad value", _edit("params.yaml", _replace(EPOCHS, "    epochs: ten\n")), DRY_RUN, True),
    ("snakemake", "--config key nothing reads", None, [*DRY_RUN, "--config", "train=x"], True),
    *[("snakemake", name, harm, DRY_RUN, True) for name, harm, _ in BROKEN_PARAMS],
    (
        "leftovers",
        "killed prepare's build",
        _leftovers(*LEFTOVERS["killed prepare's build"]),
        ["prepare", "synthetic", "-q"],
        False,
    ),
    (
        "leftovers",
        "killed cams' staging and old folders",
        _leftovers(*LEFTOVERS["killed cams' staging and old folders"], damage=_checkpoint("none")),
        [*CAMS, "-q"],
        False,
    ),
    (
        "leftovers",
        "killed evaluate's temporary file",
        _leftovers(*LEFTOVERS["killed evaluate's temporary file"], damage=_checkpoint("none")),
        EVALUATE,
        False,
    ),
]


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    root = Path(tempfile.mkdtemp(prefix="dawsol-probe-"))
    try:
        data = prepare_tiny_data(root / "data" / "synthetic")
        results = []
        for category, name, harm, command, must_refuse in CASES:
            project = root / f"case{len(results)}"
            write_project(project, None)
            shutil.copytree(data, project / "data" / "synthetic")
            if harm is not None:
                harm(project)
            env = {
                **os.environ,
                "PYTHONPATH": str(PROJECT_ROOT),
                "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
            }
            snakemake = command[0] == "snakemake"
            if snakemake:
                for part in ("Snakefile", "workflow"):
                    (shutil.copytree if (PROJECT_ROOT / part).is_dir() else shutil.copy)(
                        PROJECT_ROOT / part, project / part
                    )
            done = subprocess.run(
                [str(SNAKEMAKE), *command[1:]] if snakemake else [sys.executable, "-m", "dawsol", *command],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            err = done.stderr.strip()
            lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
            if "Traceback" in err or (snakemake and any(line.lstrip().startswith('File "') for line in lines)):
                outcome = "traceback"
            elif done.returncode == 0:
                kept = [path for path in LEFTOVERS.get(name, []) if (project / path).exists()]
                outcome = "silent wrong result" if must_refuse or kept else "accepted"
            elif snakemake:
                outcome = "one line" if len(lines) == 1 and lines[0].startswith("dawsol: error:") else "unclear message"
                err = "\n".join(lines)
            else:
                last = err.splitlines()[-1] if err else ""
                outcome = "one line" if last.startswith("dawsol: error:") else "unclear message"
            results.append({"category": category, "case": name, "outcome": outcome, "message": err.splitlines()[-1:]})
        counts: dict[str, int] = {}
        for result in results:
            counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
        print(json.dumps({"cases": len(results), "counts": counts, "results": results}, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
