"""params.yaml -> validated params -> one frozen settings object per cell.

A cell is ``<dataset>/<backbone>/<wsol>-<da>/seed<k>``, a search trial
``.../seed<k>-trial<j>``. Its settings merge, later wins:
``defaults < datasets.<dataset> < backbones.<backbone> < pairs."<dataset>/<backbone>" <
tuned."<dataset>/<backbone>/<wsol>-<da>" < cells."<cell>"``; a trial skips ``tuned`` (what a
search chose) and ends with its drawn values (``dawsol.search.space``). Method-specific blocks
(``wsol.<method>``, ``da.<method>``) are kept only for the cell's own methods, so a change to
one method's hyperparameters changes only the resolved settings of that method's cells.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from dawsol.errors import DawsolError
from dawsol.search.space import apply_draws, draw

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "params.schema.yaml"
DEFAULT_PARAMS = Path("params.yaml")
DA_COMMON_KEYS = (
    "start_epoch",
    "sample_num_source",
    "sample_num_target",
    "kmeans_max_iter",
    "anchor_update",
    "use_tsa",
    "use_ld",
    "use_lu",
)
MAX_SEED = 2**32 - 1
# a cell name, as a regular expression without anchors (also Snakemake's {cell} wildcard constraint)
CELL_PATTERN = r"[a-z][a-z0-9_]*/[a-z][a-z0-9_]*/[a-z][a-z0-9_]*-[a-z][a-z0-9_]*/seed[0-9]+(?:-trial[0-9]+)?"
_OVERRIDE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_EXPONENT_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")
_CELL_RE = re.compile(
    r"^(?P<dataset>[a-z][a-z0-9_]*)/(?P<backbone>[a-z][a-z0-9_]*)/"
    r"(?P<wsol>[a-z][a-z0-9_]*)-(?P<da>[a-z][a-z0-9_]*)/seed(?P<seed>[0-9]+)(?:-trial(?P<trial>[0-9]+))?$"
)


@dataclass(frozen=True)
class Cell:
    """One point of the grid; every output path of a cell derives from its name."""

    dataset: str
    backbone: str
    wsol: str
    da: str
    seed: int
    trial: int | None = None  # a search trial (docs/search.md): settings drawn from params.yaml `search`

    @property
    def name(self) -> str:
        """The canonical ``<dataset>/<backbone>/<wsol>-<da>/seed<k>[-trial<j>]`` form."""
        trial = "" if self.trial is None else f"-trial{self.trial}"
        return f"{self.dataset}/{self.backbone}/{self.wsol}-{self.da}/seed{self.seed}{trial}"

    @property
    def method(self) -> str:
        """``<wsol>-<da>``, the method column of the tables."""
        return f"{self.wsol}-{self.da}"

    @property
    def group(self) -> str:
        """``<dataset>/<backbone>/<wsol>-<da>``: the key of params.yaml ``tuned`` and of a search."""
        return f"{self.dataset}/{self.backbone}/{self.method}"

    def __str__(self) -> str:
        return self.name


def parse_cell(name: str) -> Cell:
    """Parse a cell name; raise DawsolError on a malformed one."""
    match = _CELL_RE.match(name.strip().strip("/"))
    if match is None:
        raise DawsolError(
            f"malformed cell {name!r}: expected <dataset>/<backbone>/<wsol>-<da>/seed<k>, "
            "e.g. synthetic/resnet18/cam-mmd/seed0 (a search trial: .../seed0-trial3)"
        )
    groups = match.groupdict()
    if int(groups["seed"]) > MAX_SEED:
        raise DawsolError(f"cell {name!r}: seed {groups['seed']} is above {MAX_SEED} (2^32 - 1, numpy's limit)")
    return Cell(
        dataset=groups["dataset"],
        backbone=groups["backbone"],
        wsol=groups["wsol"],
        da=groups["da"],
        seed=int(groups["seed"]),
        trial=None if groups["trial"] is None else int(groups["trial"]),
    )


@dataclass(frozen=True)
class DataSettings:
    root: str
    num_classes: int
    image_size: int
    resize_size: int
    num_val_sample_per_class: int
    num_workers: int
    mask_root: str | None


@dataclass(frozen=True)
class ModelSettings:
    backbone: str
    pretrained: str
    large_feature_map: bool
    width: float
    frozen_stages: int = 0  # leading trunk stages kept fixed (dawsol.models.backbones.Trunk.freeze)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    lr_classifier_ratio: float
    lr_decay_frequency: int
    weight_decay: float
    momentum: float
    nesterov: bool
    eval_every: int
    device: str
    bf16: bool
    channels_last: bool


@dataclass(frozen=True)
class WSOLSettings:
    method: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class DASettings:
    method: str
    loss: str
    lambda1: float
    lambda2: float
    grl_schedule: str
    start_epoch: int
    sample_num_source: int
    sample_num_target: int
    kmeans_max_iter: int
    anchor_update: str
    use_tsa: bool
    use_ld: bool
    use_lu: bool


@dataclass(frozen=True)
class EvalSettings:
    cam_curve_interval: float
    iou_thresholds: tuple[int, ...]
    batch_size: int
    workers: int
    # the localization maps evaluated (dawsol.posthoc.EXTRACTORS; the cell's own CAM always) and the gradient
    # methods' target layer (None: the backbone's default, docs/posthoc.md section 3)
    cam_methods: tuple[str, ...] = ("cam",)
    target_layer: str | None = None


@dataclass(frozen=True)
class TrackingSettings:
    """How the cell's MLflow run is logged (``dawsol.tracking``); outside ``to_dict``, so never a re-run trigger."""

    log_checkpoint: bool = False  # the final checkpoint as the run's MLflow model
    system_metrics_interval: float = 30.0  # seconds between system metrics samples while training; 0 = none


@dataclass(frozen=True)
class Settings:
    """Everything one cell needs, resolved from params.yaml."""

    cell: Cell
    data: DataSettings
    model: ModelSettings
    train: TrainSettings
    wsol: WSOLSettings
    da: DASettings | None
    eval: EvalSettings
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    @property
    def seed(self) -> int:
        return self.cell.seed

    @property
    def dataset_dir(self) -> Path:
        """The prepared dataset: ``<data.root>/<dataset>``."""
        return Path(self.data.root) / self.cell.dataset

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable nested dict of every resolved setting (``from_dict`` reads it back)."""
        return {
            "cell": self.cell.name,
            "data": asdict(self.data),
            "model": asdict(self.model),
            "train": asdict(self.train),
            "wsol": {"method": self.wsol.method, **dict(self.wsol.options)},
            "da": None if self.da is None else asdict(self.da),
            "eval": {
                **asdict(self.eval),
                "iou_thresholds": list(self.eval.iou_thresholds),
                "cam_methods": list(self.eval.cam_methods),
            },
        }

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values (``train.lr``), e.g. for MLflow params."""
        return dict(_flatten(self.to_dict()))

    def digest(self) -> str:
        """A short hash of the resolved settings: equal digests, equal training."""
        return tree_digest(self.to_dict())

    def weights_dict(self) -> dict[str, Any]:
        """``to_dict`` less the ``eval`` block: the settings that decide the trained weights."""
        return {key: value for key, value in self.to_dict().items() if key != "eval"}

    def weights_digest(self) -> str:
        """A short hash of ``weights_dict``: training's re-run trigger."""
        return tree_digest(self.weights_dict())

    @classmethod
    def from_dict(cls, tree: Mapping[str, Any]) -> Settings:
        """The settings ``to_dict`` wrote (e.g. into a checkpoint), with no params.yaml needed."""
        wsol = dict(tree["wsol"])
        da = tree.get("da")
        evaluation = dict(tree["eval"])
        evaluation["iou_thresholds"] = tuple(evaluation["iou_thresholds"])
        evaluation["cam_methods"] = tuple(evaluation.get("cam_methods", ("cam",)))
        return cls(
            cell=parse_cell(tree["cell"]),
            data=DataSettings(**tree["data"]),
            model=ModelSettings(**tree["model"]),
            train=TrainSettings(**tree["train"]),
            wsol=WSOLSettings(method=wsol.pop("method"), options=MappingProxyType(wsol)),
            da=None if da is None else DASettings(**da),
            eval=EvalSettings(**evaluation),
        )


def tree_digest(tree: Any) -> str:
    """A short, order-independent hash of a JSON-serialisable tree (16 hex digits of its sha256)."""
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, rest replaces)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def schema_wsol_methods() -> list[str]:
    """The WSOL methods the schema admits (``grid.wsol``); a test holds them equal to ``dawsol.wsol.WSOL_METHODS``."""
    return list(_schema()["$defs"]["grid"]["properties"]["wsol"]["items"]["enum"])


def _error_location(error: Any) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        unexpected = re.findall(r"'([^']+)' (?:was|were) unexpected", error.message)
        if unexpected:
            return ".".join([*parts, unexpected[0]]) + ": unknown key"
    if error.validator == "propertyNames":
        return ".".join(parts) + f": invalid name {error.instance!r}"
    where = ".".join(parts) or "(top level)"
    return f"{where}: {error.message}"


def validate_params(params: Any, source: str | Path, definition: str | None = None) -> None:
    """Validate a params tree against the schema (or one of its ``$defs``); raise DawsolError naming key and file."""
    from jsonschema import Draft202012Validator  # here, not at the top: it is half of `dawsol --help`'s import time

    schema = _schema() if definition is None else {"$ref": f"#/$defs/{definition}", "$defs": _schema()["$defs"]}
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        # an unknown key (often a typo) explains the most; otherwise report the deepest problem
        unknown = [e for e in errors if e.validator == "additionalProperties"]
        best = unknown[0] if unknown else max(errors, key=lambda e: len(e.absolute_path))
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise DawsolError(f"{source}: {_error_location(best)}{more}")


def load_params(path: str | Path = DEFAULT_PARAMS, profile: str | None = None) -> dict[str, Any]:
    """Read, validate and (optionally) apply a named profile overlay to params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise DawsolError(f"{path}: params file not found (run from the project root or pass --params)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DawsolError(f"{path}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    validate_params(params, path)
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
        validate_params(params, f"{path} (profile {profile})")
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
    would be ignored). README, "Settings".
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
        parts = (("dataset", dataset, params["datasets"]), ("backbone", backbone, params["backbones"]))
        unknown = [f"{kind} {name!r}" for kind, name, known in parts if name not in known]
        if unknown:
            raise DawsolError(f'{source}: pairs."{key}" names an unknown {" and ".join(unknown)}')
    blocks = {
        "all",
        *schema_wsol_methods(),
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


def _require(tree: Mapping[str, Any], key: str, where: str, source: str | Path) -> Any:
    if key not in tree:
        raise DawsolError(f"{source}: {where}.{key} is missing (set it under defaults)")
    return tree[key]


def _build(cls: type, tree: Mapping[str, Any], where: str, source: str | Path, **extra: Any) -> Any:
    names = [f for f in cls.__dataclass_fields__ if f not in extra]
    values = {name: _require(tree, name, where, source) for name in names}
    return cls(**values, **extra)


def check_cell(cell: Cell, params: Mapping[str, Any], source: str | Path = DEFAULT_PARAMS) -> None:
    """Raise DawsolError if any part of the cell is not defined in params."""
    defaults_da = params["defaults"].get("da", {})
    if cell.dataset not in params["datasets"]:
        known = ", ".join(sorted(params["datasets"]))
        raise DawsolError(f"unknown dataset {cell.dataset!r} in cell {cell.name} (known in {source}: {known})")
    if cell.backbone not in params["backbones"]:
        known = ", ".join(sorted(params["backbones"]))
        raise DawsolError(f"unknown backbone {cell.backbone!r} in cell {cell.name} (known in {source}: {known})")
    methods = schema_wsol_methods()
    if cell.wsol not in methods:
        raise DawsolError(f"unknown WSOL method {cell.wsol!r} in cell {cell.name} (known: {', '.join(methods)})")
    if cell.da != "none":
        methods = {k for k, v in defaults_da.items() if isinstance(v, Mapping)}
        if cell.da not in methods:
            known = ", ".join(["none", *sorted(methods)])
            raise DawsolError(f"unknown DA method {cell.da!r} in cell {cell.name} (known in {source}: {known})")


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
        if "loss" not in method:
            raise DawsolError(f"{source}: da.{cell.da}.loss is missing (mmd or dann)")
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
    return cells
