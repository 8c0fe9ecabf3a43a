"""The protocol's hyperparameter search: trial cells, their draws, selection on val, the report and MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from dawsol.config import Cell, grid_cells, load_params, parse_cell, resolve
from dawsol.errors import DawsolError
from dawsol.layout import SEARCH_DIR, report_outputs
from dawsol.report.search import write_search
from dawsol.search.select import SEARCH_TAG, choose, log_search, read_trials, tuned_block
from dawsol.search.space import dimensions, draw
from dawsol.tracking import PARENT_TAG

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _edit(params_copy: Path, mutate) -> Path:
    params = yaml.safe_load(params_copy.read_text())
    mutate(params)
    params_copy.write_text(yaml.safe_dump(params))
    return params_copy


def test_trial_cell_names_round_trip_and_group():
    cell = parse_cell("synthetic/resnet18/cam-mmd/seed0-trial12")
    assert (cell.seed, cell.trial, cell.group) == (0, 12, "synthetic/resnet18/cam-mmd")
    assert cell.name == "synthetic/resnet18/cam-mmd/seed0-trial12"
    assert parse_cell("synthetic/resnet18/cam-mmd/seed3").trial is None
    with pytest.raises(DawsolError, match="malformed cell"):
        parse_cell("synthetic/resnet18/cam-mmd/trial3")


SEARCH = {
    "seed": 0,
    "space": {
        "all": {"train.lr": {"log_uniform": [0.001, 0.1]}, "train.epochs": {"choice": [2, 3, 4]}},
        "mmd": {"da.start_epoch": {"int": [0, 3]}, "da.mmd.lambda1": {"uniform": [0.0, 1.0]}},
    },
}
TIED = {
    **SEARCH,
    "space": {**SEARCH["space"], "mmd": {**SEARCH["space"]["mmd"], "da.lambda1+da.lambda2": {"choice": [1]}}},
}


def test_draws_are_seeded_per_dimension_shared_across_methods_and_inside_their_ranges():
    cam = [draw(SEARCH, "cam", "none", j) for j in range(40)]
    mmd = [draw(SEARCH, "cam", "mmd", j) for j in range(40)]
    assert cam == [draw(SEARCH, "cam", "none", j) for j in range(40)]  # deterministic
    assert set(cam[0]) == {"train.lr", "train.epochs"}
    assert set(mmd[0]) == {"train.lr", "train.epochs", "da.start_epoch", "da.mmd.lambda1"}
    # trial j of CAM and of DA-WSOL share the `all` draws: a paired comparison at equal budget
    assert all(
        c["train.lr"] == m["train.lr"] and c["train.epochs"] == m["train.epochs"] for c, m in zip(cam, mmd, strict=True)
    )
    lrs = [c["train.lr"] for c in cam]
    assert all(0.001 <= lr <= 0.1 for lr in lrs) and len(set(lrs)) > 30
    assert min(lrs) < 0.003 and max(lrs) > 0.03  # log-uniform: both decades are reached
    assert {c["train.epochs"] for c in cam} == {2, 3, 4}
    assert {m["da.start_epoch"] for m in mmd} == {0, 1, 2, 3}
    assert all(0.0 <= m["da.mmd.lambda1"] <= 1.0 for m in mmd)
    # adding a dimension changes no other draw; another search seed changes them
    wider = {
        **SEARCH,
        "space": {**SEARCH["space"], "all": {**SEARCH["space"]["all"], "train.momentum": {"choice": [0.8]}}},
    }
    assert all(
        {k: v for k, v in draw(wider, "cam", "none", j).items() if k != "train.momentum"} == cam[j] for j in range(5)
    )
    assert draw({**SEARCH, "seed": 1}, "cam", "none", 0) != cam[0]
    assert dimensions(SEARCH, "cam", "none").keys() == {"train.lr", "train.epochs"}


def test_a_tied_dimension_sets_every_setting_it_names(params_copy):
    def mutate(p):
        p["search"] = {"space": {"mmd": {"da.sample_num_source+da.sample_num_target": {"choice": [8, 16, 32]}}}}

    path = _edit(params_copy, mutate)
    params = load_params(path)
    values = set()
    for j in range(12):
        da = resolve(f"synthetic/resnet18/cam-mmd/seed0-trial{j}", params, path).da
        assert da.sample_num_source == da.sample_num_target
        values.add(da.sample_num_source)
    assert values == {8, 16, 32}


def test_a_trial_resolves_to_its_draws_and_skips_tuned(params_copy):
    def mutate(p):
        p["search"] = SEARCH
        p["tuned"] = {"synthetic/resnet18/cam-mmd": {"train": {"lr": 0.5, "momentum": 0.5}}}

    path = _edit(params_copy, mutate)
    params = load_params(path)
    trial = resolve("synthetic/resnet18/cam-mmd/seed0-trial3", params, path)
    drawn = draw(SEARCH, "cam", "mmd", 3)
    assert trial.train.lr == drawn["train.lr"] and trial.train.epochs == drawn["train.epochs"]
    assert trial.da.start_epoch == drawn["da.start_epoch"] and trial.da.lambda1 == drawn["da.mmd.lambda1"]
    assert trial.train.momentum == params["defaults"]["train"]["momentum"]  # `tuned` is not a trial's layer
    cell = resolve("synthetic/resnet18/cam-mmd/seed0", params, path)
    assert (cell.train.lr, cell.train.momentum) == (0.5, 0.5)  # an ordinary cell takes `tuned`
    assert resolve("synthetic/resnet18/cam-dann/seed0", params, path).train.lr != 0.5  # only its own method


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p.update(search={"space": {"all": {"train.lrr": {"choice": [1]}}}}), "names no setting"),
        (lambda p: p.update(search={"space": {"all": {"train.lr": {"log_uniform": [0, 1]}}}}), "search"),
        (lambda p: p.update(search={"space": {"all": {"train.lr": {"choice": [1], "int": [1, 2]}}}}), "search"),
        (lambda p: p.update(tuned={"synthetic/resnet99/cam-mmd": {}}), "tuned"),
        (lambda p: p.update(search={"space": {"mdd": {"train.lr": {"choice": [0.1]}}}}), "search.space.mdd"),
        (lambda p: p.update(search={"space": {"all": {"train.epochs": {"uniform": [3, 5]}}}}), "integer setting"),
        (lambda p: p.update(search={"space": {"all": {"train.epochs": {"int": [5, 2]}}}}), "wrong way round"),
    ],
)
def test_bad_search_and_tuned_keys_are_one_line_errors(params_copy, mutate, expected):
    path = _edit(params_copy, mutate)
    with pytest.raises(DawsolError, match=expected) as error:
        resolve("synthetic/resnet18/cam-none/seed0-trial0", load_params(path), path)
    assert "\n" not in str(error.value)


def test_the_search_profile_is_a_grid_of_trials_whose_report_is_the_search(params_copy):
    params = load_params(params_copy, "search")
    cells = grid_cells(params, params_copy)
    trials = params["grid"]["trials"]
    assert trials >= 6 and all(c.trial is not None for c in cells)
    assert len(cells) == trials * len(params["grid"]["da"]) * len(params["grid"]["wsol"])
    outputs = report_outputs(params, params_copy)
    assert outputs["tables"] == [] and SEARCH_DIR / "synthetic.tuned.yaml" in outputs["search"]
    assert report_outputs(load_params(params_copy), params_copy)["search"] == []


def _write_metrics(cells_dir: Path, cell: Cell, val: dict, test: dict) -> None:
    path = cells_dir / cell.name / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cell": cell.name, "splits": {"val": val, "test": test}}))


def _trial_cells(method: str, n: int) -> list[Cell]:
    wsol, da = method.split("-")
    return [Cell("synthetic", "resnet18", wsol, da, 0, j) for j in range(n)]


def test_selection_uses_val_only_breaks_ties_low_and_writes_the_tuned_block(tmp_path):
    cells = _trial_cells("cam-none", 4) + _trial_cells("cam-mmd", 3)
    vals = [(30, 30), (50, 20), (20, 50), (10, 10), (40, 40), (35, 45), (10, 90)]
    for cell, (box, px) in zip(cells, vals, strict=True):
        # the test split says the opposite: selection must never read it
        _write_metrics(tmp_path, cell, {"MaxBoxAccV2": box, "PxAP": px}, {"MaxBoxAccV2": 100 - box, "PxAP": 100 - px})
    trials = read_trials(cells, SEARCH, tmp_path)
    chosen = choose(trials)
    assert chosen["synthetic/resnet18/cam-none"].cell.trial == 1  # 35 ties trial 2's 35: the lower index
    assert chosen["synthetic/resnet18/cam-mmd"].cell.trial == 2  # 50 beats 40 and 40
    assert math.isclose(chosen["synthetic/resnet18/cam-mmd"].score, 50.0)
    block = tuned_block(chosen)["tuned"]
    assert block["synthetic/resnet18/cam-mmd"]["train"]["lr"] == draw(SEARCH, "cam", "mmd", 2)["train.lr"]
    assert (
        block["synthetic/resnet18/cam-mmd"]["da"]["mmd"]["lambda1"] == draw(SEARCH, "cam", "mmd", 2)["da.mmd.lambda1"]
    )

    result = write_search(cells, SEARCH, tmp_path, tmp_path / "search")
    names = ["synthetic.csv", "synthetic.md", "synthetic.png", "synthetic.tuned.yaml"]
    assert sorted(p.name for p in result.files) == names
    assert yaml.safe_load((tmp_path / "search" / "synthetic.tuned.yaml").read_text()) == tuned_block(chosen)
    table = (tmp_path / "search" / "synthetic.md").read_text()
    bold = [line for line in table.splitlines() if line.startswith("| **")]
    assert len(bold) == 2 and "| **1** |" in bold[0] and "| **2** |" in bold[1]  # the chosen trials


def test_several_seeds_are_averaged_before_choosing(tmp_path):
    """Trial j trains once per seed with the same draws: the choice is by the mean, not the luckiest seed."""
    cells = [Cell("synthetic", "resnet18", "cam", "none", seed, trial) for seed in (0, 1) for trial in (0, 1)]
    scores = {(0, 0): 50, (1, 0): 10, (0, 1): 29, (1, 1): 29}  # trial 0: one lucky seed, mean 30; trial 1: 29
    for cell in cells:
        value = scores[(cell.seed, cell.trial)]
        _write_metrics(tmp_path, cell, {"MaxBoxAccV2": value, "PxAP": value}, {})
    chosen = choose(read_trials(cells, SEARCH, tmp_path))["synthetic/resnet18/cam-none"]
    assert (chosen.cell.trial, chosen.score) == (0, 30.0)
    scores[(1, 0)] = 0  # now trial 0's mean is 25
    _write_metrics(tmp_path, cells[2], {"MaxBoxAccV2": 0, "PxAP": 0}, {})  # seed 1, trial 0
    assert choose(read_trials(cells, SEARCH, tmp_path))["synthetic/resnet18/cam-none"].cell.trial == 1


def test_a_trial_evaluated_under_other_settings_is_refused(tmp_path):
    cell = _trial_cells("cam-none", 1)[0]
    path = tmp_path / cell.name / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"settings_digest": "old", "splits": {"val": {"MaxBoxAccV2": 1.0}}}))
    with pytest.raises(DawsolError, match="other settings"):
        read_trials([cell], SEARCH, tmp_path, {cell: "new"})
    assert len(read_trials([cell], SEARCH, tmp_path, {cell: "old"})) == 1


def test_each_searched_dataset_writes_its_own_tuned_block(tmp_path):
    """A search of one dataset leaves another dataset's committed choice file alone."""
    cells = _trial_cells("cam-none", 2) + [Cell("photos", "resnet18", "cam", "none", 0, j) for j in range(2)]
    for cell in cells:
        _write_metrics(tmp_path, cell, {"MaxBoxAccV2": 10.0 + cell.trial, "PxAP": 5.0}, {})
    write_search(cells, SEARCH, tmp_path, tmp_path / "search")
    for dataset in ("synthetic", "photos"):
        block = yaml.safe_load((tmp_path / "search" / f"{dataset}.tuned.yaml").read_text())["tuned"]
        assert list(block) == [f"{dataset}/resnet18/cam-none"]
    assert not (tmp_path / "search" / "tuned.yaml").exists()


def test_a_trial_without_val_metrics_is_named(tmp_path):
    cell = _trial_cells("cam-none", 1)[0]
    with pytest.raises(DawsolError, match="dawsol evaluate synthetic/resnet18/cam-none/seed0-trial0"):
        read_trials([cell], SEARCH, tmp_path)


@pytest.mark.slow
def test_the_search_is_one_mlflow_parent_run_per_method_with_the_trials_nested(tmp_path, monkeypatch):

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from dawsol import tracking

    client, experiment = tracking.init_store()
    cells = _trial_cells("cam-none", 2) + _trial_cells("cam-mmd", 2)
    children = {}
    for cell in cells:
        run = client.create_run(experiment, run_name=cell.name, tags={tracking.CELL_TAG: cell.name})
        children[cell.name] = run.info.run_id
        _write_metrics(tmp_path / "cells", cell, {"MaxBoxAccV2": 10.0 + cell.trial, "PxAP": 5.0}, {})
    result = write_search(cells, TIED, tmp_path / "cells", tmp_path / "search")
    parents = log_search(result.trials, result.chosen, result.files)
    assert parents == log_search(result.trials, result.chosen, result.files)  # a re-run reuses the parents
    assert len(set(parents.values())) == 2
    for cell in cells:
        child = client.get_run(children[cell.name])
        assert child.data.tags[PARENT_TAG] == parents[cell.group]
    parent = client.get_run(parents["synthetic/resnet18/cam-mmd"])
    assert parent.data.tags[SEARCH_TAG] == "synthetic/resnet18/cam-mmd"
    assert parent.data.tags["chosen_trial"] == "synthetic/resnet18/cam-mmd/seed0-trial1"
    assert parent.data.tags["chosen.da.lambda1"] == parent.data.tags["chosen.da.lambda2"] == "1"  # a tied dimension
    assert parent.data.metrics["val.score"] == pytest.approx(8.0)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "search")} >= {"search/synthetic.tuned.yaml"}


def test_params_tuned_is_the_committed_search_choice():
    """params.yaml's `tuned` block is what the committed searches chose (results/search/<dataset>.tuned.yaml)."""
    committed = {}
    for path in sorted((PROJECT_ROOT / SEARCH_DIR).glob("*.tuned.yaml")):
        committed.update(yaml.safe_load(path.read_text())["tuned"])
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert set(committed) >= {"synthetic/efficientnet_lite0/cam-none"} and params["tuned"] == committed
