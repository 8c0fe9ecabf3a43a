"""Resolution: a cell's settings merged from the defaults, dataset, backbone, pair, tuned and cell blocks
(docs/architecture.md, "Settings resolution"), and the grid's cells.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dawsol.components.da_losses import DA_LOSSES
from dawsol.config.cells import Cell, parse_cell
from dawsol.config.params import DEFAULT_PARAMS, check_cell, load_params
from dawsol.config.settings import (
    DA_COMMON_KEYS,
    DASettings,
    DataSettings,
    EvalSettings,
    ModelSettings,
    Settings,
    TrackingSettings,
    TrainSettings,
    WSOLSettings,
    deep_merge,
)
from dawsol.errors import DawsolError
from dawsol.search.space import apply_draws, draw

__all__ = ["grid_cells", "grid_datasets", "grid_imports", "resolve"]


def _require(tree: Mapping[str, Any], key: str, where: str, source: str | Path) -> Any:
    if key not in tree:
        raise DawsolError(f"{source}: {where}.{key} is missing (set it under defaults)")
    return tree[key]


def _build(cls: type, tree: Mapping[str, Any], where: str, source: str | Path, **extra: Any) -> Any:
    names = [f for f in cls.__dataclass_fields__ if f not in extra]
    values = {name: _require(tree, name, where, source) for name in names}
    return cls(**values, **extra)


def _da_loss(method: str, loss: str | None, source: str | Path) -> str:
    """The L_d of DA method ``method``: the loss it is named after (``da.mmd``), else its block's ``loss``."""
    if method in DA_LOSSES:
        if loss not in (None, method):
            raise DawsolError(
                f"{source}: da.{method}.loss is {loss}, but the block is named after the loss {method}: "
                "drop loss: or rename the block"
            )
        return method
    if loss is None:
        raise DawsolError(
            f"{source}: da.{method}.loss is missing: a DA method not named after a loss names one "
            f"({', '.join(DA_LOSSES)})"
        )
    return loss


def resolve(
    cell: Cell | str,
    params: Mapping[str, Any] | None = None,
    source: str | Path = DEFAULT_PARAMS,
) -> Settings:
    """Resolve one cell into its frozen Settings (loading ``source`` if params is None)."""
    if params is None:
        params = load_params(source)
    if isinstance(cell, str):
        cell = parse_cell(cell)
    check_cell(cell, params, source)
    tree: dict[str, Any] = copy.deepcopy(params["defaults"])
    tuned = {} if cell.trial is not None else (params.get("tuned") or {}).get(cell.group) or {}
    for layer in (
        params["datasets"].get(cell.dataset) or {},
        params["backbones"].get(cell.backbone) or {},
        params.get("pairs", {}).get(f"{cell.dataset}/{cell.backbone}") or {},
        tuned,
        params.get("cells", {}).get(cell.name) or {},
    ):
        tree = deep_merge(tree, layer)
    if cell.trial is not None:
        apply_draws(tree, draw(params.get("search") or {}, cell.wsol, cell.da, cell.trial), f"{source}: {cell}")

    wsol_tree = tree.get("wsol", {})
    wsol = WSOLSettings(method=cell.wsol, options=MappingProxyType(dict(wsol_tree.get(cell.wsol, {}))))

    da: DASettings | None = None
    if cell.da != "none":
        da_tree = tree.get("da", {})
        common = {k: da_tree[k] for k in DA_COMMON_KEYS if k in da_tree}
        method = deep_merge(common, da_tree[cell.da])
        method.setdefault("grl_schedule", "official")
        method["loss"] = _da_loss(cell.da, method.get("loss"), source)
        da = _build(DASettings, method, f"da.{cell.da}", source, method=cell.da)

    data_tree = _require(tree, "data", "defaults", source)
    if data_tree.get("image_size", 0) > data_tree.get("resize_size", math.inf):
        raise DawsolError(
            f"{source}: cell {cell}: data.image_size {data_tree['image_size']} is above data.resize_size "
            f"{data_tree['resize_size']} (training crops image_size out of the resized image)"
        )
    eval_tree = dict(_require(tree, "eval", "defaults", source))
    eval_tree["iou_thresholds"] = tuple(_require(eval_tree, "iou_thresholds", "eval", source))
    eval_tree["cam_methods"] = tuple(_require(eval_tree, "cam_methods", "eval", source))
    return Settings(
        cell=cell,
        data=_build(DataSettings, _require(tree, "data", "defaults", source), "data", source),
        model=_build(
            ModelSettings, _require(tree, "model", "defaults", source), "model", source, backbone=cell.backbone
        ),
        train=_build(TrainSettings, _require(tree, "train", "defaults", source), "train", source),
        wsol=wsol,
        da=da,
        eval=_build(EvalSettings, eval_tree, "eval", source),
        tracking=TrackingSettings(**(tree.get("tracking") or {})),
    )


def grid_imports(params: Mapping[str, Any], source: str | Path = DEFAULT_PARAMS) -> dict[Cell, Path]:
    """The grid's imported cells (``imports`` of params.yaml): cell -> the checkpoint file it is imported from.

    An imported cell is evaluated, never trained (``dawsol import-checkpoint``); a key that names no
    cell of the grid is an error naming it.
    """
    cells = set(grid_cells(params, source))
    imports = {}
    for name, file in (params.get("imports") or {}).items():
        cell = parse_cell(name)
        if cell not in cells:
            raise DawsolError(f'{source}: imports."{name}" is not a cell of the grid')
        imports[cell] = Path(file)
    return imports


def grid_datasets(params: Mapping[str, Any], source: str | Path = DEFAULT_PARAMS) -> list[str]:
    """The grid's datasets that have at least one cell, in grid order."""
    return list(dict.fromkeys(cell.dataset for cell in grid_cells(params, source)))


def grid_cells(params: Mapping[str, Any], source: str | Path = DEFAULT_PARAMS) -> list[Cell]:
    """The cells of ``params['grid']``: the product of its lists, less the excluded globs, plus ``extra``.

    With ``grid.trials: N`` (a search, docs/search.md) each cell of the product is N trial cells instead.
    """
    grid = params["grid"]
    excluded = grid.get("exclude", [])
    trials = [None] if not grid.get("trials") else list(range(grid["trials"]))
    cells = []
    for dataset in grid["datasets"]:
        for backbone in grid["backbones"]:
            for wsol in grid["wsol"]:
                for da in grid["da"]:
                    for seed in grid["seeds"]:
                        for trial in trials:
                            cell = Cell(dataset, backbone, wsol, da, seed, trial)
                            if any(fnmatch.fnmatchcase(cell.name, pattern) for pattern in excluded):
                                continue
                            check_cell(cell, params, source)
                            cells.append(cell)
    for name in grid.get("extra", []):
        cell = parse_cell(name)
        check_cell(cell, params, source)
        if cell not in cells:
            cells.append(cell)
    if not cells:  # load_params refused an empty list of the product: here grid.exclude took every cell
        raise DawsolError(f"{source}: grid.exclude removes every cell of the grid (and grid.extra names none)")
    return cells
