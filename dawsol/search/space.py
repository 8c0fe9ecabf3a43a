"""A search trial's settings: each dimension of params.yaml ``search.space`` drawn from its own seeded generator.

A trial cell (``<dataset>/<backbone>/<wsol>-<da>/seed<k>-trial<j>``) gets the dimensions of
``search.space.all`` and of its two methods' blocks (``search.space.<wsol>``,
``search.space.<da>``). Dimension ``key`` of trial ``j`` draws from a generator seeded by
``(search.seed, j, key)`` alone, so trial ``j`` of CAM and of DA-WSOL share their learning rate
and epochs (a paired comparison), and adding a dimension changes no other draw. A key may tie
several settings to one draw with ``+`` (docs/search.md).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from dawsol.errors import DawsolError

SHARED_SPACE = "all"  # the space every method's trials draw from
SIGNIFICANT_DIGITS = 3  # drawn real numbers are rounded to this many significant digits
TIE = "+"  # a dimension key naming several settings that take the same drawn value


def dimensions(search: Mapping[str, Any], wsol: str, da: str) -> dict[str, Mapping[str, Any]]:
    """The dotted setting keys a trial of ``<wsol>-<da>`` draws, each with its range."""
    space = search.get("space") or {}
    dims: dict[str, Mapping[str, Any]] = {}
    for block in (SHARED_SPACE, wsol, da):
        dims.update(space.get(block) or {})
    return dims


def _round(value: float) -> float:
    if value == 0:
        return 0.0
    return round(value, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value))))


def draw_value(spec: Mapping[str, Any], rng: random.Random) -> Any:
    """One draw of a range: ``log_uniform: [lo, hi]``, ``uniform: [lo, hi]``, ``int: [lo, hi]`` or ``choice: [...]``."""
    ((kind, values),) = spec.items()
    if kind == "choice":
        return values[rng.randrange(len(values))]
    low, high = values
    if low > high:
        raise DawsolError(f"search.space: range {kind}: [{low}, {high}] has its bounds the wrong way round")
    if kind == "int":
        return rng.randint(low, high)
    if kind == "uniform":
        return _round(rng.uniform(low, high))
    return _round(math.exp(rng.uniform(math.log(low), math.log(high))))


def draw(search: Mapping[str, Any], wsol: str, da: str, trial: int) -> dict[str, Any]:
    """Trial ``trial``'s value of every dimension of ``<wsol>-<da>`` (dotted key -> value)."""
    seed = search.get("seed", 0)
    return {
        key: draw_value(spec, random.Random(f"dawsol-search/{seed}/{trial}/{key}"))
        for key, spec in sorted(dimensions(search, wsol, da).items())
    }


def settings_of(key: str) -> list[str]:
    """The dotted settings a dimension sets: one, or several tied by ``+`` (``da.sample_num_source+...``)."""
    return key.split(TIE)


def expand(draws: Mapping[str, Any]) -> dict[str, Any]:
    """The draws per dotted setting, a tied dimension's value given to each of its settings."""
    return {name: value for key, value in draws.items() for name in settings_of(key)}


def apply_draws(tree: dict[str, Any], draws: Mapping[str, Any], where: str) -> None:
    """Set each dotted key of ``draws`` in the merged settings ``tree``; the key must name an existing setting
    and an integer setting takes only integer draws."""
    for key, value in expand(draws).items():
        *parents, leaf = key.split(".")
        node: Any = tree
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], Mapping):
            raise DawsolError(f"{where}: search.space key {key!r} names no setting of this cell (e.g. train.lr)")
        current = node[leaf]
        if isinstance(current, int) and not isinstance(current, bool) and not isinstance(value, int):
            raise DawsolError(f"{where}: search.space key {key!r} is an integer setting; draw it with int or choice")
        node[leaf] = value
