"""The pipeline's stages as both front doors run them: each stage's command, its re-run keys and resources.

The Snakefile's rules and the ``dvc.yaml`` generator (``dawsol.pipeline.dvcfile``) take their commands
from here and their paths from ``dawsol.layout``, so Snakemake and DVC run the same stages on
the same cells.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dawsol.atomic import filesystem_error
from dawsol.config import DEFAULT_PARAMS, Cell, grid_cells, parse_cell, resolve
from dawsol.errors import DawsolError


@contextlib.contextmanager
def snakemake_errors() -> Iterator[None]:
    """The Snakefile's reading of the settings: a DawsolError (or a filesystem fault that names its path) ends
    Snakemake with dawsol's one line. Snakemake prints a SystemExit's message alone; any other exception under a
    "<Error> in file <rules file>, line N:" header, with a traceback after the message."""
    try:
        yield
    except DawsolError as exc:
        raise SystemExit(f"dawsol: error: {exc}") from None
    except OSError as exc:
        failure = filesystem_error(exc)
        if failure is None:
            raise
        raise SystemExit(f"dawsol: error: {failure}") from None


def snakemake_profile(config: Mapping[str, Any]) -> str | None:
    """The params.yaml profile of ``--config profile=NAME``. Settings live in params.yaml alone, so any other
    ``--config`` (or ``--configfile``) key, which nothing would read, is refused by name."""
    unread = sorted(set(config) - {"profile"})
    if unread:
        raise DawsolError(
            f"--config {unread[0]}: not a setting Snakemake reads (only profile=NAME; settings live in params.yaml)"
        )
    profile = config.get("profile")
    return None if profile in (None, "") else str(profile)


GENERATED = ("synthetic", "photos")  # datasets built by a generator whose knobs are params.yaml's <dataset> block


def dataset_dir(params: Mapping[str, Any], dataset: str, source: str | Path) -> Path:
    """The prepared dataset folder of ``dataset`` (``<data.root>/<dataset>`` of its first cell)."""
    for cell in grid_cells(params, source):
        if cell.dataset == dataset:
            return resolve(cell, params, source).dataset_dir
    raise ValueError(f"dataset {dataset!r} has no cell in the grid")


def da_warnings(params: Mapping[str, Any], source: str | Path) -> list[str]:
    """The one-line warning of every grid cell whose DA terms never switch on (``Settings.da_never_active``)."""
    warnings = (resolve(cell, params, source).da_never_active() for cell in grid_cells(params, source))
    return [warning for warning in warnings if warning]


def prepare_params(params: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The params.yaml entries ``dawsol prepare <dataset>`` reads, by dotted key (its re-run trigger)."""
    candidates = {
        "defaults.data": params["defaults"].get("data"),
        f"datasets.{dataset}.data": (params["datasets"].get(dataset) or {}).get("data"),
        dataset: params.get(dataset) if dataset in GENERATED else None,
    }
    return {key: value for key, value in candidates.items() if value is not None}


def train_gpus(params: Mapping[str, Any], cell: Cell | str) -> int:
    """GPUs of a cell's training job (Snakemake ``resources: gpu``): ``resources.train_gpus.<dataset>``
    of params.yaml, 1 for a dataset not listed, 0 for CPU-only. With more than one, ``dawsol train``
    runs the cell under torchrun, one process per GPU."""
    if isinstance(cell, str):
        cell = parse_cell(cell)
    return int(params.get("resources", {}).get("train_gpus", {}).get(cell.dataset, 1))


def cli(command: str, *args: str, source: str | Path, profile: str | None) -> str:
    """The shell command of one stage: ``dawsol <command> <args> [--params P] [--profile X]``."""
    words = ["dawsol", command, *args]
    if Path(source) != DEFAULT_PARAMS:
        words += ["--params", Path(source).as_posix()]
    if profile:
        words += ["--profile", profile]
    return " ".join(words)
