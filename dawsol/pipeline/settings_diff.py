"""``dawsol resolve <cell> --diff``: which settings changed since the cell last ran, key by key.

Snakemake and DVC re-run a cell when its resolved settings change, and Snakemake shows only
digests ("Params have changed ... before '1f89...' now '2235...'": ``Settings.weights_digest()``
for training, ``Settings.digest()`` for evaluation). The settings a cell last ran with are
recorded in its checkpoint (``runs/<cell>/checkpoint.pt``: what training used) and, under DVC,
in ``runs/<cell>/resolved.json`` (the last ``dawsol settings``); ``metrics.json`` records the
digest its evaluation used. This module compares each with the settings resolved now
(docs/pipeline.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dawsol.checkpoints.format import load_checkpoint
from dawsol.config import Settings, tree_digest
from dawsol.errors import DawsolError
from dawsol.layout import checkpoint_path, evaluate_outputs, settings_output

ABSENT = "(absent)"


@dataclass(frozen=True)
class Change:
    """One dotted settings key whose value differs: ``key: old -> new`` (``ABSENT`` on the side without it)."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


@dataclass(frozen=True)
class Recorded:
    """Settings a cell ran with, where they were found and what they are."""

    path: Path
    what: str
    settings: Mapping[str, Any]


def _show(value: Any) -> str:
    return value if value is ABSENT else json.dumps(value)


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def settings_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """The dotted keys whose values differ between two ``Settings.to_dict()`` trees, in key order."""
    before, after = dict(_leaves(old)), dict(_leaves(new))
    return [
        Change(key, before.get(key, ABSENT), after.get(key, ABSENT))
        for key in sorted(before.keys() | after.keys())
        if before.get(key, ABSENT) != after.get(key, ABSENT)
    ]


def _normalised(tree: Mapping[str, Any]) -> Mapping[str, Any]:
    """A stored tree read back as today's dawsol reads it (a setting added since, at its default, is no change)."""
    try:
        return Settings.from_dict(tree).to_dict()
    except (KeyError, TypeError, ValueError, DawsolError):
        return tree


def recorded_settings(settings: Settings) -> list[Recorded]:
    """The recorded settings of the cell that exist: its checkpoint's, then its ``resolved.json``."""
    found = []
    checkpoint = checkpoint_path(settings.cell)
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        if isinstance(state.get("settings"), Mapping):
            what = "imported with" if state.get("imported") else "trained with"
            found.append(Recorded(checkpoint, what, _normalised(state["settings"])))
    resolved = settings_output(settings.cell)
    if resolved.is_file():
        try:
            tree = json.loads(resolved.read_text())
        except ValueError:
            raise DawsolError(f"{resolved}: not JSON; delete it (dawsol settings writes it again)") from None
        found.append(Recorded(resolved, "written by the last dawsol settings (DVC's trigger)", _normalised(tree)))
    return found


def _weights(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in tree.items() if key != "eval"}


def diff_lines(settings: Settings) -> list[str]:
    """The report ``dawsol resolve --diff`` prints: per recorded source, its changes and what re-runs."""
    recorded = recorded_settings(settings)
    metrics = evaluate_outputs(settings.cell)["metrics"]
    if not recorded and not metrics.is_file():
        raise DawsolError(
            f"{settings.cell.name} has not run: no {checkpoint_path(settings.cell)}, "
            f"{settings_output(settings.cell)} or {metrics} to compare with"
        )
    current = settings.to_dict()
    lines = []
    for source in recorded:
        changes = settings_changes(source.settings, current)
        lines.append(f"against {source.path} ({source.what}): {len(changes) or 'no'} change(s)")
        lines += [f"  {change}" for change in changes]
        if changes:
            before, after = tree_digest(_weights(source.settings)), settings.weights_digest()
            if before != after:
                lines.append(f"  training re-runs: weights digest {before} -> {after}")
            else:
                lines.append(f"  training is current (weights digest {after}): every change is under eval")
    if metrics.is_file():
        try:
            evaluated = json.loads(metrics.read_text()).get("settings_digest")
        except ValueError:
            evaluated = None
        if evaluated == settings.digest():
            lines.append(f"{metrics}: evaluated with these settings (digest {evaluated})")
        else:
            lines.append(
                f"{metrics}: evaluated with other settings: settings digest {evaluated} -> {settings.digest()}"
            )
    return lines
