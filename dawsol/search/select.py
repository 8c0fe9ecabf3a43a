"""A search's result: its trials' val metrics, the trial chosen per method, the MLflow parent runs.

Each search group (``<dataset>/<backbone>/<wsol>-<da>`` with ``grid.trials`` trial cells) is
scored on the val split only, by the mean of ``search.metrics`` that the split has
(MaxBoxAccV2 and PxAP by default); the best trial wins, the lower trial index on a tie. The
chosen draws become params.yaml's ``tuned:`` block (``tuned_block``, written by
``dawsol.report.search``; docs/search.md). The test split is never read here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dawsol import tracking
from dawsol.config import Cell
from dawsol.errors import DawsolError
from dawsol.search.space import draw, settings_of

DEFAULT_METRICS = ("MaxBoxAccV2", "PxAP")
SELECTION_SPLIT = "val"
SEARCH_TAG = "dawsol.search"  # the parent run of a search group carries the group's name
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a trial's run under its search


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


def read_trials(cells: Sequence[Cell], search: Mapping[str, Any], cells_dir: Path) -> list[Trial]:
    """Every trial cell's draws and val metrics from its ``metrics.json``."""
    metrics = tuple(search.get("metrics") or DEFAULT_METRICS)
    trials = []
    for cell in cells:
        if cell.trial is None:
            continue
        path = cells_dir / cell.name / "metrics.json"
        try:
            val = json.loads(path.read_text())["splits"][SELECTION_SPLIT]
        except FileNotFoundError:
            raise DawsolError(f"{path}: missing (run `dawsol evaluate {cell.name}` first)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DawsolError(
                f"{path}: no {SELECTION_SPLIT} metrics ({exc}); re-run `dawsol evaluate {cell.name}`"
            ) from None
        draws = draw(search, cell.wsol, cell.da, cell.trial)
        trials.append(Trial(cell, draws, val, selection_score(val, metrics)))
    return trials


def choose(trials: Sequence[Trial]) -> dict[str, Trial]:
    """The best trial of each search group (by val score; the lower trial index on a tie)."""
    chosen: dict[str, Trial] = {}
    for trial in sorted(trials, key=lambda t: (t.cell.group, t.cell.seed, t.cell.trial)):
        best = chosen.get(trial.cell.group)
        if not math.isnan(trial.score) and (best is None or trial.score > best.score):
            chosen[trial.cell.group] = trial
    return chosen


def tuned_block(chosen: Mapping[str, Trial]) -> dict[str, Any]:
    """The chosen draws as params.yaml's ``tuned`` block: group -> nested settings."""
    tuned: dict[str, Any] = {}
    for group, trial in sorted(chosen.items()):
        tree: dict[str, Any] = {}
        for key, value in ((name, v) for tied, v in trial.draws.items() for name in settings_of(tied)):
            *parents, leaf = key.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        tuned[group] = tree
    return {"tuned": tuned}


def log_search(trials: Sequence[Trial], chosen: Mapping[str, Trial], files: Sequence[Path]) -> dict[str, str]:
    """One MLflow parent run per search group (reused on a re-run), each trial's cell run nested under it.

    The parent carries the chosen trial, its draws as params and its val score, the search
    table and figure as artifacts; return group -> parent run id.
    """
    client, experiment_id = tracking.init_store()
    parents = {}
    for group in sorted({t.cell.group for t in trials}):
        found = tracking.with_retry(
            client.search_runs,
            [experiment_id],
            filter_string=f"tags.`{SEARCH_TAG}` = '{group}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if found:
            run_id = found[0].info.run_id
        else:
            run = tracking.with_retry(
                client.create_run, experiment_id, run_name=f"search {group}", tags={SEARCH_TAG: group}
            )
            run_id = run.info.run_id
        parent = tracking.CellRun(client, run_id)
        best = chosen.get(group)
        if best is not None:
            parent.set_tag("chosen_trial", best.cell.name)
            for key, value in best.draws.items():
                for setting in settings_of(key):  # a tied dimension: one tag per setting (no "+" in MLflow names)
                    parent.set_tag(f"chosen.{setting}", str(value))
            parent.log_metrics({f"{SELECTION_SPLIT}.score": best.score, SELECTION_SPLIT: dict(best.val)})
        for trial in (t for t in trials if t.cell.group == group):
            for child in tracking.with_retry(
                client.search_runs,
                [experiment_id],
                filter_string=f"tags.`{tracking.CELL_TAG}` = '{trial.cell.name}'",
            ):
                tracking.with_retry(client.set_tag, child.info.run_id, PARENT_TAG, run_id)
        for path in files:
            parent.log_artifact(path, "search")
        parent.finish()
        parents[group] = run_id
    return parents
