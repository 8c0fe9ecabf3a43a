"""The backbone records: each backbone of params.yaml with every fact about it, torch-free.

A backbone is declared once, on its trunk builder in its family's module under ``dawsol.models``::

    @register_backbone("resnet50", "ResNet50", dropped_heads=("fc.",), target_layer="layer3", ...)
    def resnet50_trunk(request: TrunkRequest) -> Trunk: ...

``BACKBONES`` reads those declarations from the source (``dawsol.components.declared``): the schema's
``backbones`` enum, the report's label, the post-hoc default target layer, the importer's formats and
the trunk builder all come from the record. ``dawsol.models.registry`` builds the trunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dawsol.components import CELL_PART, check_declared, check_name, declared, unique
from dawsol.errors import DawsolError

Builder = TypeVar("Builder")

# (mean, std) per RGB channel of pixels in [0, 1]: normalisation belongs to the backbone, so the datasets take it
# from its record (``dawsol.models.registry.normalization``)
Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]
IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# the official checkpoint formats ``dawsol import-checkpoint`` reads (dawsol.checkpoints.importer)
DA_WSOL = "da-wsol"
WSOLEVALUATION = "wsolevaluation"


@dataclass(frozen=True)
class BackboneRecord:
    """One backbone: its name and label, how its trunk is built and initialised, where its ImageNet weights come from,
    its input normalisation, post-hoc default and the official checkpoints that hold it."""

    name: str
    title: str  # the report's label
    builder: str  # lazy reference to its ``dawsol.models.trunk.TrunkBuilder``
    dropped_heads: tuple[str, ...]  # key prefixes of the ImageNet network that the trunk drops
    # the gradient methods' default target layer (docs/posthoc.md section 3): a module path in the CAM trunk
    target_layer: str
    torchvision_weights: str | None = None  # torchvision's weights enum (IMAGENET1K_V1), e.g. ``ResNet50_Weights``
    imagenet_loader: str | None = None  # or a lazy reference to a loader of its ImageNet state dict
    normalization: Normalization = IMAGENET_NORMALIZATION
    width_multiplier: bool = False  # whether model.width may differ from 1.0 (from-scratch CPU backbones)
    # where the ImageNet network is a CAM model (one linear head on pooled features): that head's key prefix and a
    # lazy reference to the builder of the unmodified trunk it was trained on (``dawsol localize --imagenet``)
    imagenet_head: str | None = None
    classifier_trunk: str | None = None
    official_formats: tuple[str, ...] = ()  # the official checkpoint formats that hold this backbone
    # how ``dawsol import-checkpoint`` reads those files' trunk weights, lazy references (default: as they are named):
    # ``(name, adl, large_feature_map) -> trunk name | None (none) | "" (unused)`` and
    # ``(file names, adl, large_feature_map) -> hint``
    official_names: str | None = None
    official_hint: str | None = None

    def __post_init__(self) -> None:
        check_name("backbone", self.name, CELL_PART)
        unknown = set(self.official_formats) - {DA_WSOL, WSOLEVALUATION}
        if unknown:
            raise DawsolError(
                f"backbone {self.name}: unknown official format(s) {sorted(unknown)} "
                f"(known: {DA_WSOL}, {WSOLEVALUATION})"
            )
        if (self.torchvision_weights is None) == (self.imagenet_loader is None):
            raise DawsolError(
                f"backbone {self.name}: give one source of ImageNet weights, torchvision_weights or imagenet_loader"
            )
        if (self.imagenet_head is None) != (self.classifier_trunk is None):
            raise DawsolError(f"backbone {self.name}: imagenet_head and classifier_trunk go together")
        if not (self.title and self.target_layer and self.dropped_heads):
            raise DawsolError(f"backbone {self.name}: title, target_layer and dropped_heads must not be empty")
        if not all(isinstance(prefix, str) for prefix in self.dropped_heads):
            raise DawsolError(f"backbone {self.name}: dropped_heads is a tuple of key prefixes (strings)")
        if len(self.normalization) != 2 or not all(len(part) == 3 for part in self.normalization):
            raise DawsolError(f"backbone {self.name}: normalization is ((r, g, b) means, (r, g, b) stds)")


def register_backbone(
    name: str,
    title: str,
    *,
    dropped_heads: tuple[str, ...],
    target_layer: str,
    torchvision_weights: str | None = None,
    imagenet_loader: str | None = None,
    normalization: Normalization = IMAGENET_NORMALIZATION,
    width_multiplier: bool = False,
    imagenet_head: str | None = None,
    classifier_trunk: str | None = None,
    official_formats: tuple[str, ...] = (),
    official_names: str | None = None,
    official_hint: str | None = None,
) -> Callable[[Builder], Builder]:
    """Declares the decorated trunk builder (``dawsol.models.trunk.TrunkBuilder``) as backbone ``name``, with the
    facts of ``BackboneRecord``; ``imagenet_loader``, ``classifier_trunk``, ``official_names`` and ``official_hint``
    name functions of the same module."""
    return check_declared("backbone", name, BACKBONES, "builder")


BACKBONES: dict[str, BackboneRecord] = unique(
    "backbone",
    (
        found.record(
            BackboneRecord,
            at="builder",
            local=("imagenet_loader", "classifier_trunk", "official_names", "official_hint"),
        )
        for found in declared("dawsol.models", "register_backbone")
    ),
    "builder",
)
