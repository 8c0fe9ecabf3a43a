"""The code version a result came from: the dawsol release, the git commit and whether the library differed from it.

Editing library code re-runs nothing by itself (Snakemake and DVC see the commands and the
params, not the code), so every checkpoint, ``metrics.json`` and MLflow run records
``code_version()``, and ``dawsol report`` warns when one table mixes versions.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from dawsol import __version__

PACKAGE_ROOT = Path(__file__).resolve().parent
# what counts as the code: the library and its pinned dependencies (results/, runs/ and params.yaml do not)
CODE_PATHS = ("dawsol", "pyproject.toml")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """``{"dawsol": version, "git_commit": sha or None, "git_dirty": bool or None}`` of the running library.

    ``git_commit`` is None where dawsol does not run from a git checkout (an installed wheel);
    ``git_dirty`` is True when the library's tracked files differ from that commit.
    """
    root = PACKAGE_ROOT.parent
    try:
        if Path(_git(root, "rev-parse", "--show-toplevel")).resolve() != root.resolve():
            raise ValueError("dawsol is not the top of this git checkout")
        commit = _git(root, "rev-parse", "HEAD")
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS))
    except (OSError, ValueError, subprocess.SubprocessError):
        return {"dawsol": __version__, "git_commit": None, "git_dirty": None}
    return {"dawsol": __version__, "git_commit": commit, "git_dirty": dirty}


def describe(code: dict[str, Any] | None) -> str:
    """A short label of a code version: ``0.1.0 @ 1a2b3c4d5e6f`` (``+dirty`` when the library was edited)."""
    if not code:
        return "unknown"
    commit = code.get("git_commit")
    label = f"{code.get('dawsol')} @ {commit[:12]}" if commit else str(code.get("dawsol"))
    return label + ("+dirty" if code.get("git_dirty") else "")
