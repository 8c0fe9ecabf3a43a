"""The CLI's contract: help, version, and one-line errors with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dawsol.cli import COMMANDS


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dawsol", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_command():
    result = _run("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_has_help(name):
    result = _run(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: dawsol" in result.stdout


def test_version():
    result = _run("--version")
    assert result.returncode == 0 and result.stdout.startswith("dawsol ")


def test_cli_does_not_import_torch_for_help():
    code = "import sys, dawsol.cli; dawsol.cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`dawsol cells --profile wsolevaluation | head -1`: the pipe closes after one line of 54."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dawsol", "cells", "--profile", "wsolevaluation"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    proc.stdout.read(1)
    proc.stdout.close()  # the reader is gone before the rest is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141) and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_bad_key_is_one_line_error(params_copy):
    params_copy.write_text(params_copy.read_text().replace("    lr: 0.001\n", "    lrr: 0.001\n", 1))
    result = _run("cells", "--params", str(params_copy))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "defaults.train.lrr: unknown key" in result.stderr and str(params_copy) in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_cell_is_one_line_error(params_copy):
    result = _run("resolve", "synthetic/resnet18/cam-foo/seed0", "--params", str(params_copy))
    assert result.returncode == 1
    assert result.stderr.startswith("dawsol: error: unknown DA method 'foo'")
    assert "Traceback" not in result.stderr


def test_resolve_prints_settings(params_copy):
    result = _run("resolve", "synthetic/resnet18/cam-dann/seed2", "--params", str(params_copy), "--json")
    assert result.returncode == 0, result.stderr
    assert '"loss": "dann"' in result.stdout and '"cell": "synthetic/resnet18/cam-dann/seed2"' in result.stdout


def test_resolve_says_when_a_cell_is_not_in_the_grid(params_copy):
    inside = _run("resolve", "synthetic/efficientnet_lite0/cam-dann/seed2", "--params", str(params_copy))
    assert inside.returncode == 0 and "not a cell of the grid" not in inside.stderr
    outside = _run("resolve", "synthetic/resnet18/has-mmd/seed7", "--params", str(params_copy))
    assert outside.returncode == 0 and "loss: mmd" in outside.stdout
    assert "synthetic/resnet18/has-mmd/seed7 is not a cell of the grid" in outside.stderr
