"""params.yaml: loading, schema validation with errors that name file and key, profiles, ``KEY=VALUE`` overrides,
and the check of a cell's parts against the file."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from dawsol.components.backbones import BACKBONES
from dawsol.components.da_losses import DA_LOSSES
from dawsol.components.extractors import EXTRACTORS
from dawsol.components.wsol_methods import WSOL_METHODS
from dawsol.config.cells import Cell, parse_cell
from dawsol.config.settings import deep_merge
from dawsol.errors import DawsolError
from dawsol.provenance import PACKAGE_ROOT

__all__ = [
    "DEFAULT_PARAMS",
    "PACKAGE_ROOT",
    "PROJECT_ROOT",
    "SCHEMA_PATH",
    "apply_overrides",
    "check_cell",
    "check_override_keys",
    "load_params",
    "load_schema",
    "parse_override",
    "validate_params",
]

PROJECT_ROOT = PACKAGE_ROOT.parent
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "params.schema.yaml"
DEFAULT_PARAMS = Path("params.yaml")
_OVERRIDE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_EXPONENT_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")


BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")  # schema checks whose reason is shown
# the schema's component names, ``$defs.<key>``: each enum is its registry's keys, filled in at load
REGISTERED_NAMES: dict[str, Mapping[str, Any]] = {
    "backbone": BACKBONES,
    "wsol_method": WSOL_METHODS,
    "da_loss": DA_LOSSES,
    "extractor": EXTRACTORS,
}


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The params schema (``SCHEMA_PATH``) with its component enums filled in from the records (``dawsol.components``).

    The YAML file stays what users read; only the names come from the registries, never a copy.
    """
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    for key, registry in REGISTERED_NAMES.items():
        schema["$defs"][key]["enum"] = list(registry)
    return schema


def _error_location(error: Any) -> tuple[list[str], str]:
    """The dotted path of a schema error's key (an unknown key's own name included) and the message's text."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        unexpected = re.findall(r"'([^']+)' (?:was|were) unexpected", error.message)
        if unexpected:
            return [*parts, unexpected[0]], ".".join([*parts, unexpected[0]]) + ": unknown key"
    if error.validator == "propertyNames":
        return [*parts, str(error.instance)], ".".join(parts) + f": invalid name {error.instance!r}"
    reason = error.schema.get("description") if error.validator in BOUNDS and isinstance(error.schema, dict) else None
    message = error.message + (f" ({reason})" if reason else "")
    return (
        parts,
        f"{'.'.join(parts)}: {message}" if parts else message,
    )  # a bare value (a CLI option): its source names it


def _read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """The YAML file's data and its node tree (which knows each key's line); a syntax error or a duplicate key is a
    DawsolError naming the line."""
    text = path.read_text()
    try:
        document = yaml.compose(text, Loader=yaml.SafeLoader)
        duplicate = _duplicate_key(document)
        if duplicate is not None:
            key, line, first = duplicate
            raise DawsolError(
                f"{path}: line {line}: duplicate key {key} (first at line {first}; YAML would keep only the last)"
            )
        return yaml.safe_load(text), document
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DawsolError(f"{path}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None


def _duplicate_key(node: yaml.Node | None, path: tuple[str, ...] = ()) -> tuple[str, int, int] | None:
    """The first key that a mapping of the node tree repeats: its dotted path, its line and its first line."""
    if isinstance(node, yaml.MappingNode):
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in first_lines and key != "<<":
                return ".".join((*path, key)), key_node.start_mark.line + 1, first_lines[key]
            first_lines.setdefault(key, key_node.start_mark.line + 1)
            found = _duplicate_key(value_node, (*path, key))
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _duplicate_key(item, (*path, str(index)))
            if found is not None:
                return found
    return None


def _line_of(document: yaml.Node | None, parts: Sequence[str]) -> int | None:
    """The line of the key (or list item) at ``parts`` in the node tree, or None if the file does not write it."""
    node, line = document, None
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if str(k.value) == part), None)
            if match is None:
                return None
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return None
    return line


def _non_finite(tree: Any, path: tuple[str, ...] = ()) -> tuple[str, float] | None:
    """The dotted key and value of the first NaN or infinite number in a params tree, or None."""
    if isinstance(tree, float) and not math.isfinite(tree):
        return ".".join(path), tree
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        found = _non_finite(value, (*path, str(key)))
        if found is not None:
            return found
    return None


def validate_params(
    params: Any,
    source: str | Path,
    definition: str | None = None,
    document: yaml.Node | None = None,
    within: Sequence[str] = (),
) -> None:
    """Validate a params tree against the schema (or one of its ``$defs``); raise DawsolError naming key and file.

    ``document``: the file's node tree, to name the key's line too (``within``: where the tree's keys are written
    first, e.g. a profile's overlay; then the base file).
    """
    from jsonschema import Draft202012Validator  # here, not at the top: it is half of `dawsol --help`'s import time

    found = _non_finite(params)
    if found is not None:
        where = f"{found[0]}: " if found[0] else ""
        raise DawsolError(f"{source}: {where}{found[1]} is not a finite number (settings are finite numbers)")
    schema = load_schema()
    if definition is not None:
        schema = {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]}
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        # an unknown key (often a typo) explains the most; otherwise report the deepest problem
        unknown = [e for e in errors if e.validator == "additionalProperties"]
        best = unknown[0] if unknown else max(errors, key=lambda e: len(e.absolute_path))
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        parts, location = _error_location(best)
        raise DawsolError(f"{source}: {_where(document, within, parts)}{location}{more}")


def _where(document: yaml.Node | None, within: Sequence[str], parts: Sequence[str]) -> str:
    """``"line N: "`` for the key at ``parts`` (looked up under ``within`` first), or nothing."""
    line = _line_of(document, [*within, *parts]) if within else None
    line = line if line is not None else _line_of(document, parts) if parts else None
    return f"line {line}: " if line is not None else ""


def _check_grid_not_empty(
    params: Mapping[str, Any], source: str, document: yaml.Node | None, within: Sequence[str]
) -> None:
    """An empty list in the grid's product, with no ``extra`` cells, makes a grid of no cells: an error naming it."""
    grid = params["grid"]
    if grid.get("extra"):
        return
    for key in ("datasets", "backbones", "wsol", "da", "seeds"):
        if not grid[key]:
            raise DawsolError(
                f"{source}: {_where(document, within, ['grid', key])}grid.{key} is empty, so the grid has no cells "
                "(list at least one, or name cells in grid.extra)"
            )


def load_params(path: str | Path = DEFAULT_PARAMS, profile: str | None = None) -> dict[str, Any]:
    """Read, validate and (optionally) apply a named profile overlay to params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise DawsolError(f"{path}: params file not found (run from the project root or pass --params)")
    params, document = _read_yaml(path)
    validate_params(params, path, document=document)
    check_override_keys(params, path)
    profiles = params.get("profiles") or {}
    for name, overlay in profiles.items():  # a typo in any profile is an error, not only in the one asked for
        check_override_keys(deep_merge(params, overlay), f"{path} (profile {name})")
    if profile:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise DawsolError(f"{path}: unknown profile {profile!r} (known: {known})")
        params = deep_merge(params, profiles[profile])
        if "imports" in profiles[profile]:  # a profile's imports replace the base's (its grid does too)
            params["imports"] = copy.deepcopy(profiles[profile]["imports"])
        validate_params(params, f"{path} (profile {profile})", document=document, within=("profiles", profile))
        _check_grid_not_empty(params, f"{path} (profile {profile})", document, ("profiles", profile))
    else:
        _check_grid_not_empty(params, str(path), document, ())
    return params


def parse_override(item: str) -> dict[str, Any]:
    """One command-line override ``dotted.key=value`` as a partial settings tree, its value typed as YAML types it
    (``2``, ``0.5``, ``true``, ``[30, 50]``, ``null``; an exponent without a dot, ``1e-3``, is a number too)."""
    key, sep, text = item.partition("=")
    if not sep or not _OVERRIDE_KEY.fullmatch(key):
        raise DawsolError(f"override {item!r}: expected KEY=VALUE with a dotted settings key, e.g. train.epochs=2")
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        raise DawsolError(f"override {item!r}: the value is not valid YAML (quote it: {key}='...')") from None
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 1e-3 as a string; nobody means that on a command line
    tree: dict[str, Any] = {}
    branch = tree
    *parents, leaf = key.split(".")
    for part in parents:
        branch = branch.setdefault(part, {})
    branch[leaf] = value
    return tree


def apply_overrides(params: Mapping[str, Any], cell: Cell | str, overrides: Sequence[str]) -> dict[str, Any]:
    """``params`` with command-line overrides (``train.epochs=2``) merged into the cell's ``cells."<cell>"`` block.

    They behave exactly as if written there: the same schema check (a wrong key is the same one-line
    error), the same resolution and digest (a search trial's drawn values still come last). A
    ``wsol.<method>`` or ``da.<method>`` block of another method than the cell's is an error (it
    would be ignored). docs/settings.md, "Overrides".
    """
    if isinstance(cell, str):
        cell = parse_cell(cell)
    merged = copy.deepcopy(dict(params))
    if not overrides:
        return merged
    block: dict[str, Any] = dict((merged.get("cells") or {}).get(cell.name) or {})
    for item in overrides:
        tree = parse_override(item)
        validate_params(tree, f"override {item}", definition="settings")
        for group, own in (("wsol", cell.wsol), ("da", cell.da)):
            for method, value in (tree.get(group) or {}).items():
                if isinstance(value, Mapping) and method != own:
                    raise DawsolError(
                        f"override {item}: {group}.{method} does not apply to {cell.name} (its {group} method is {own})"
                    )
        block = deep_merge(block, tree)
    merged["cells"] = {**(merged.get("cells") or {}), cell.name: block}
    return merged


def check_override_keys(params: Mapping[str, Any], source: str | Path) -> None:
    """Every ``pairs."<dataset>/<backbone>"`` and ``cells."<cell>"`` key must name what params defines.

    A key that matches nothing would otherwise be ignored, and its cell would silently run
    without the overrides meant for it.
    """
    for key in params.get("pairs") or {}:
        dataset, _, backbone = key.partition("/")
        parts = (("dataset", dataset, params["datasets"]), ("backbone", backbone, BACKBONES))
        unknown = [f"{kind} {name!r}" for kind, name, known in parts if name not in known]
        if unknown:
            raise DawsolError(f'{source}: pairs."{key}" names an unknown {" and ".join(unknown)}')
    blocks = {
        "all",
        *WSOL_METHODS,
        *(k for k, v in params["defaults"].get("da", {}).items() if isinstance(v, Mapping)),
    }
    for block in (params.get("search") or {}).get("space") or {}:
        if block not in blocks:
            raise DawsolError(
                f"{source}: search.space.{block} names no method (use all, a WSOL method or a DA method of defaults.da)"
            )
    for key in params.get("tuned") or {}:
        try:
            check_cell(parse_cell(f"{key}/seed0"), params, source)
        except DawsolError as exc:
            raise DawsolError(f'{source}: tuned."{key}" (expected <dataset>/<backbone>/<wsol>-<da>): {exc}') from None
    for key in params.get("cells") or {}:
        try:
            check_cell(parse_cell(key), params, source)
        except DawsolError as exc:
            raise DawsolError(f'{source}: cells."{key}": {exc}') from None


def check_cell(cell: Cell, params: Mapping[str, Any], source: str | Path = DEFAULT_PARAMS) -> None:
    """Raise DawsolError if any part of the cell is not defined in params."""
    defaults_da = params["defaults"].get("da", {})
    if cell.dataset not in params["datasets"]:
        known = ", ".join(sorted(params["datasets"]))
        raise DawsolError(f"unknown dataset {cell.dataset!r} in cell {cell.name} (known in {source}: {known})")
    if cell.backbone not in BACKBONES:  # a registered backbone needs no block of its own in params.yaml
        raise DawsolError(f"unknown backbone {cell.backbone!r} in cell {cell.name} (known: {', '.join(BACKBONES)})")
    if cell.wsol not in WSOL_METHODS:
        raise DawsolError(f"unknown WSOL method {cell.wsol!r} in cell {cell.name} (known: {', '.join(WSOL_METHODS)})")
    if cell.da != "none":
        methods = {k for k, v in defaults_da.items() if isinstance(v, Mapping)}
        if cell.da not in methods:
            known = ", ".join(["none", *sorted(methods)])
            raise DawsolError(f"unknown DA method {cell.da!r} in cell {cell.name} (known in {source}: {known})")
