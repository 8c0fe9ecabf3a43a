"""The code version a result came from: the dawsol release, the git commit and whether the library differed from it.

Editing library code re-runs nothing by itself (Snakemake and DVC see the commands and the
params, not the code), so every checkpoint, ``metrics.json`` and MLflow run records
``code_version()``, and ``dawsol report`` warns when one table mixes versions.
"""

from __future__ import annotations

import hashlib
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
    """The running library's version: ``dawsol`` (release), ``git_commit``, ``library`` and ``git_dirty``.

    ``library`` is a hash of the committed ``dawsol/`` tree and ``pyproject.toml``: commits that
    change only docs or results keep it. ``git_dirty`` is True when those paths differ from the
    commit (untracked files under ``dawsol/`` included). All but ``dawsol`` are None where dawsol
    does not run from a git checkout (an installed wheel).
    """
    root = PACKAGE_ROOT.parent
    try:
        if Path(_git(root, "rev-parse", "--show-toplevel")).resolve() != root.resolve():
            raise ValueError("dawsol is not the top of this git checkout")
        commit = _git(root, "rev-parse", "HEAD")
        objects = _git(root, "rev-parse", *(f"HEAD:{path}" for path in CODE_PATHS))
        dirty = bool(_git(root, "status", "--porcelain", "--", *CODE_PATHS))
    except (OSError, ValueError, subprocess.SubprocessError):
        return {"dawsol": __version__, "git_commit": None, "library": None, "git_dirty": None}
    library = hashlib.sha256(objects.encode()).hexdigest()[:12]
    return {"dawsol": __version__, "git_commit": commit, "library": library, "git_dirty": dirty}


def describe(code: dict[str, Any] | None) -> str:
    """A short label of a code version, equal for equal library code: ``0.1.0 library 1a2b3c4d5e6f``
    (``+dirty`` when the library was edited; the commit where no library hash was recorded)."""
    if not code:
        return "unknown"
    if code.get("library"):
        label = f"{code.get('dawsol')} library {code['library']}"
    elif code.get("git_commit"):
        label = f"{code.get('dawsol')} @ {code['git_commit'][:12]}"
    else:
        label = str(code.get("dawsol"))
    return label + ("+dirty" if code.get("git_dirty") else "")
