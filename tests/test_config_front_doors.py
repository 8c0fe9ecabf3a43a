"""Config errors at both front doors (issue 26): `dawsol`'s loader and `snakemake` name file, line and key in one
line; duplicate YAML keys are refused by name; an empty grid is an error naming its key."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from workflow_fixtures import BIN, copy_project

from dawsol.config import grid_cells, load_params
from dawsol.errors import DawsolError

GRID_SEEDS = "  seeds: [0, 1, 2]\n"  # the base grid's seeds line in params.yaml
EPOCHS = "    epochs: 50\n"  # defaults.train.epochs


def line_of(text: str, fragment: str) -> int:
    """The 1-based line of the first occurrence of ``fragment`` (a whole line) in ``text``."""
    return text[: text.index(fragment)].count("\n") + 1


def edited(path: Path, old: str, new: str) -> int:
    """Replace the first ``old`` line of ``path`` by ``new``; return the line number."""
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return line_of(text, old)


# each case: (the edit of params.yaml as (old line, new line), the --config profile or None, the error's pattern;
# {line} in the pattern is the edited line's number)
CASES = {
    "unknown key": (
        EPOCHS,
        "    epoch: 50\n",
        None,
        r"params\.yaml: line {line}: defaults\.train\.epoch: unknown key$",
    ),
    "bad value": (
        EPOCHS,
        "    epochs: ten\n",
        None,
        r"params\.yaml: line {line}: defaults\.train\.epochs: 'ten' is not",
    ),
    "yaml syntax": ("  data:\n", "  data: [\n", None, r"params\.yaml: line \d+ is not valid YAML: "),
    "duplicate top-level key": (
        "grid:\n",
        "grid: {datasets: [synthetic], backbones: [resnet18], wsol: [cam], da: [none], seeds: [0]}\ngrid:\n",
        None,
        r"params\.yaml: line {next}: duplicate key grid \(first at line {line}; YAML would keep only the last\)$",
    ),
    "duplicate nested key": (
        EPOCHS,
        EPOCHS + "    epochs: 5\n",
        None,
        r"params\.yaml: line {next}: duplicate key defaults\.train\.epochs \(first at line {line}; YAML would",
    ),
    "empty grid": (
        GRID_SEEDS,
        "  seeds: []\n",
        None,
        r"params\.yaml: line {line}: grid\.seeds is empty, so the grid has no cells \(list at least one",
    ),
    "unknown profile": (GRID_SEEDS, GRID_SEEDS, "nope", r"params\.yaml: unknown profile 'nope' \(known: paper, "),
}


def expected(case: str, line: int) -> str:
    return CASES[case][3].format(line=line, next=line + 1)


@pytest.mark.parametrize("case", list(CASES))
def test_dawsol_names_file_line_and_key(params_copy: Path, case: str) -> None:
    old, new, profile, _ = CASES[case]
    line = edited(params_copy, old, new)
    with pytest.raises(DawsolError) as error:
        params = load_params(params_copy, profile)
        grid_cells(params, params_copy)
    message = str(error.value)
    assert "\n" not in message
    assert re.search(expected(case, line), message), message


def test_a_profile_error_names_the_profile_line(params_copy: Path) -> None:
    """An empty grid in a profile names the profile and the profile's line."""
    line = edited(params_copy, "      seeds: [0]\n", "      seeds: []\n")  # the search profile's
    load_params(params_copy)  # the base grid is not empty: only the profile's use fails
    with pytest.raises(DawsolError, match=rf"\(profile search\): line {line}: grid\.seeds is empty"):
        load_params(params_copy, "search")


def test_an_excluded_grid_is_an_error_naming_exclude(params_copy: Path) -> None:
    edited(params_copy, "  exclude: []\n", '  exclude: ["synthetic/*"]\n')
    with pytest.raises(DawsolError, match=r"params\.yaml: grid\.exclude removes every cell of the grid"):
        grid_cells(load_params(params_copy), params_copy)


def test_an_empty_list_with_extra_cells_is_a_grid(params_copy: Path) -> None:
    """Cells in grid.extra alone are a grid: an empty product list is then no error."""
    edited(params_copy, GRID_SEEDS, "  seeds: []\n")
    edited(params_copy, "  extra: []\n", "  extra: [synthetic/efficientnet_lite0/cam-none/seed5]\n")
    assert [c.name for c in grid_cells(load_params(params_copy), params_copy)] == [
        "synthetic/efficientnet_lite0/cam-none/seed5"
    ]


def snakemake_fails(project: Path, *args: str) -> list[str]:
    """Run `snakemake -n` in ``project``, expect it to fail; its output's non-empty lines."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--cores", "1", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0, result.stdout + result.stderr
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_snakemake_prints_the_same_one_line(tmp_path: Path, project_root: Path, case: str) -> None:
    """Snakemake's front door: dawsol's line, alone (no traceback, no schema dump, no Snakemake preamble)."""
    project = copy_project(project_root, tmp_path / "project")
    old, new, profile, _ = CASES[case]
    line = edited(project / "params.yaml", old, new)
    lines = snakemake_fails(project, *(["--config", f"profile={profile}"] if profile else []))
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith("dawsol: error: "), lines[0]
    assert re.search(expected(case, line), lines[0]), lines[0]


@pytest.mark.slow
def test_snakemake_refuses_config_keys_it_would_not_read(tmp_path: Path, project_root: Path) -> None:
    """Settings live in params.yaml: `--config train=...` would be ignored, so it is refused by name."""
    project = copy_project(project_root, tmp_path / "project")
    lines = snakemake_fails(project, "--config", "grid=x")
    assert lines == [
        "dawsol: error: --config grid: not a setting Snakemake reads (only profile=NAME; settings live in params.yaml)"
    ]
