"""A cell's resolved settings: typed, frozen dataclasses per section, their dict round trip and digests."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dawsol.config.cells import Cell, parse_cell

__all__ = [
    "DA_COMMON_KEYS",
    "DASettings",
    "DataSettings",
    "EvalSettings",
    "ModelSettings",
    "Settings",
    "TrackingSettings",
    "TrainSettings",
    "WSOLSettings",
    "deep_merge",
    "tree_digest",
]

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
    frozen_stages: int = 0  # leading trunk stages kept fixed (dawsol.models.trunk.Trunk.freeze)


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
    threads: int = 1  # CPU threads of train/evaluate: they decide the floating-point order (dawsol.threads)


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

    @property
    def first_epoch(self) -> int:
        """The first 0-based epoch with the DA terms on: they are off up to ``start_epoch``, on after it."""
        return self.start_epoch + 1

    def active(self, epoch: int) -> bool:
        """Whether the DA terms are on in 0-based ``epoch``."""
        return epoch >= self.first_epoch


@dataclass(frozen=True)
class EvalSettings:
    cam_curve_interval: float
    iou_thresholds: tuple[int, ...]
    batch_size: int
    workers: int
    # the localization maps evaluated (dawsol.components.extractors.EXTRACTORS; the cell's own CAM always) and the
    # gradient methods' target layer (None: the backbone's default, docs/posthoc.md section 3)
    cam_methods: tuple[str, ...] = ("cam",)
    target_layer: str | None = None
    # ScoreCAM's and AblationCAM's forward passes per batch, one per target-layer channel (docs/posthoc.md section 8)
    channel_batch_size: int = 32


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

    def da_never_active(self) -> str | None:
        """A one-line warning if the cell has DA terms that never switch on in its ``train.epochs``, else None."""
        if self.da is None or self.da.first_epoch < self.train.epochs:
            return None
        return (
            f"cell {self.cell.name}: its DA terms never switch on: they start in 0-based epoch {self.da.first_epoch} "
            f"(da.start_epoch {self.da.start_epoch} + 1) and training stops after epoch {self.train.epochs - 1} "
            f"(train.epochs {self.train.epochs}); lower da.start_epoch or raise train.epochs"
        )

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
