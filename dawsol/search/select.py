"""A search's result: its trials' val metrics, the trial chosen per method, the MLflow parent runs.

Each search group (``<dataset>/<backbone>/<wsol>-<da>`` with ``grid.trials`` trial cells) is
scored on the val split only, by the mean of ``search.metrics`` that the split has
(MaxBoxAccV2 and PxAP by default); the best trial wins, the lower trial index on a tie. The
chosen draws become params.yaml's ``tuned:`` block (``tuned_block``, written by
``dawsol.report.search``; docs/search.md). The test split is never read here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dawsol import tracking
from dawsol.config import Cell
from dawsol.errors import DawsolError
from dawsol.layout import OWN_MAPS, evaluate_outputs, read_cell_metrics
from dawsol.search.space import draw, expand

DEFAULT_METRICS = ("MaxBoxAccV2", "PxAP")
SELECTION_SPLIT = "val"
SEARCH_TAG = "dawsol.search"  # the parent run of a search group carries the group's name


@dataclass(frozen=True)
class Trial:
    """One trial cell: its drawn settings, its val metrics and the selection score they give."""

    cell: Cell
    draws: Mapping[str, Any]
    val: Mapping[str, Any]
    score: float


def selection_score(val: Mapping[str, Any], metrics: Sequence[str]) -> float:
    """The mean of ``metrics`` that the val split has (NaN if it has none of them)."""
    values = [float(val[m]) for m in metrics if isinstance(val.get(m), int | float)]
    return sum(values) / len(values) if values else math.nan


def read_trials(
    cells: Sequence[Cell], search: Mapping[str, Any], cells_dir: Path, digests: Mapping[Cell, str] | None = None
) -> list[Trial]:
    """Every trial cell's draws and val metrics from its ``metrics.json``.

    ``digests`` (cell -> ``Settings.digest()`` of today's params) refuses a trial evaluated under other
    settings (e.g. ``search.space`` edited since): its draws would not be what it trained with.
    """
    metrics = selection_metrics(search)
    trials = []
    for cell in cells:
        if cell.trial is None:
            continue
        found = read_cell_metrics(cell, SELECTION_SPLIT, cells_dir)
        if digests is not None and found.document.get("settings_digest") != digests[cell]:
            raise DawsolError(
                f"{evaluate_outputs(cell, cells_dir)['metrics']}: evaluated under other settings than params.yaml "
                f"gives {cell.name} now (search.space changed?); re-run the search "
                "(snakemake --cores all --config profile=search)"
            )
        val = found.maps[OWN_MAPS]
        draws = draw(search, cell.wsol, cell.da, cell.trial)
        trials.append(Trial(cell, draws, val, selection_score(val, metrics)))
    return trials


def selection_metrics(search: Mapping[str, Any]) -> tuple[str, ...]:
    """The val metrics whose mean scores a trial (``search.metrics``)."""
    return tuple(search.get("metrics") or DEFAULT_METRICS)


def choose(trials: Sequence[Trial]) -> dict[str, Trial]:
    """The best trial of each search group by its val score averaged over the training seeds (the lower
    trial index on a tie); the returned trial is the first seed's, with that mean as its score."""
    by_trial: dict[tuple[str, int], list[Trial]] = {}
    for trial in sorted(trials, key=lambda t: (t.cell.group, t.cell.trial, t.cell.seed)):
        by_trial.setdefault((trial.cell.group, trial.cell.trial), []).append(trial)
    chosen: dict[str, Trial] = {}
    for (group, _), seeds in by_trial.items():
        scores = [t.score for t in seeds]
        if any(math.isnan(score) for score in scores):
            continue
        mean = sum(scores) / len(scores)
        best = chosen.get(group)
        if best is None or mean > best.score:
            chosen[group] = Trial(seeds[0].cell, seeds[0].draws, seeds[0].val, mean)
    missing = sorted({t.cell.group for t in trials} - set(chosen))
    if missing:
        raise DawsolError(f"search: no trial of {', '.join(missing)} has the val metrics {SELECTION_SPLIT} needs")
    return chosen


def tuned_block(chosen: Mapping[str, Trial]) -> dict[str, Any]:
    """The chosen draws as params.yaml's ``tuned`` block: group -> nested settings."""
    tuned: dict[str, Any] = {}
    for group, trial in sorted(chosen.items()):
        tree: dict[str, Any] = {}
        for key, value in expand(trial.draws).items():
            *parents, leaf = key.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        tuned[group] = tree
    return {"tuned": tuned}


def log_search(trials: Sequence[Trial], chosen: Mapping[str, Trial], files: Sequence[Path]) -> dict[str, str]:
    """One MLflow parent run per search group (``tracking.parent_run``, reused on a re-run), each trial's
    cell run nested under it (``tracking.nest``).

    The parent carries the chosen trial, its draws as tags and its val score, the search
    table and figure as artifacts; return group -> parent run id.
    """
    client, experiment_id = tracking.init_store()
    parents = {}
    for group in sorted({t.cell.group for t in trials}):
        parent = tracking.parent_run(client, experiment_id, SEARCH_TAG, group, f"search {group}", "report")
        run_id = parent.run_id
        best = chosen.get(group)
        if best is not None:
            parent.set_tag("chosen_trial", best.cell.name)
            stale = [key for key in tracking.with_retry(client.get_run, run_id).data.tags if key.startswith("chosen.")]
            for key in stale:  # a re-run: the tags of this choice only
                tracking.with_retry(client.delete_tag, run_id, key)
            for key, value in expand(best.draws).items():  # one tag per setting (no "+" in MLflow names)
                parent.set_tag(f"chosen.{key}", str(value))
            parent.log_metrics({f"{SELECTION_SPLIT}.score": best.score, SELECTION_SPLIT: dict(best.val)})
        tracking.nest(client, experiment_id, parent, [t.cell.name for t in trials if t.cell.group == group])
        for path in files:
            parent.log_artifact(path, "search")
        parent.finish()
        parents[group] = run_id
    return parents
