"""The backbone registry: each backbone of params.yaml with its trunk builder, ImageNet weights and input normalisation.

A backbone is named once, as a key of ``BACKBONES`` (the schema's ``backbones`` enum, held equal
by a test). Its entry builds the trunk (``dawsol.models.backbones``,
``dawsol.models.efficientnet_lite``), says where its ImageNet weights come from and which heads
of that network the trunk drops, and how its inputs are normalised: normalisation belongs to the
backbone, so the datasets take it from here (``normalization``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from dawsol.data.datasets import IMAGENET_NORMALIZATION, Normalization
from dawsol.errors import DawsolError
from dawsol.models.backbones import Trunk, TrunkBuilder, inception_v3_trunk, resnet_trunk, vgg16_trunk
from dawsol.models.efficientnet_lite import (
    LITE_NORMALIZATION,
    build_efficientnet_lite0,
    imagenet_lite0_state_dict,
    lite0_classifier_trunk,
)
from dawsol.models.pretrained import load_into, load_trunk, pretrained_state, torchvision_imagenet


@dataclass(frozen=True)
class Backbone:
    """One backbone: trunk builder, ImageNet state dict, the head prefixes the trunk drops, input normalisation."""

    build: TrunkBuilder
    imagenet: Callable[[], dict[str, Tensor]]
    dropped_heads: tuple[str, ...]
    normalization: Normalization = IMAGENET_NORMALIZATION
    width_multiplier: bool = False  # whether model.width may differ from 1.0 (from-scratch CPU backbones)
    # where the ImageNet network is a CAM model (one linear head on pooled features): that head's key prefix and
    # the builder of the unmodified trunk it was trained on (``dawsol localize --imagenet``)
    imagenet_head: str | None = None
    classifier_trunk: Callable[[Callable[[nn.Module], None]], Trunk] | None = None


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(
        resnet_trunk("resnet18"),
        torchvision_imagenet("resnet18", "ResNet18_Weights"),
        ("fc.",),
        width_multiplier=True,
    ),
    "resnet50": Backbone(resnet_trunk("resnet50"), torchvision_imagenet("resnet50", "ResNet50_Weights"), ("fc.",)),
    "inception_v3": Backbone(
        inception_v3_trunk,
        torchvision_imagenet("inception_v3", "Inception_V3_Weights"),
        ("fc.", "AuxLogits.", "Mixed_7"),
    ),
    "vgg16": Backbone(vgg16_trunk, torchvision_imagenet("vgg16", "VGG16_Weights"), ("classifier.",)),
    "efficientnet_lite0": Backbone(
        build_efficientnet_lite0,
        imagenet_lite0_state_dict,
        ("_fc.",),
        normalization=LITE_NORMALIZATION,
        imagenet_head="_fc",
        classifier_trunk=lite0_classifier_trunk,
    ),
}


def backbone(name: str) -> Backbone:
    """The registry entry of ``name``; a DawsolError listing the known ones otherwise."""
    if name not in BACKBONES:
        raise DawsolError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    return BACKBONES[name]


def normalization(name: str) -> Normalization:
    """The (mean, std) per RGB channel that backbone ``name`` expects its inputs normalised with."""
    return backbone(name).normalization


def build_trunk(
    name: str,
    pretrained: str,
    large_feature_map: bool,
    width: float,
    adl: nn.Module | None = None,
    variant: str = "cam",
) -> Trunk:
    """The WSOL trunk of backbone ``name`` (its ``variant``: the CAM trunk, ACoL's or SPG's) with ``pretrained``
    weights loaded (see ``dawsol.models.pretrained``)."""
    entry = backbone(name)
    state, of_trunk = pretrained_state(pretrained, entry.imagenet)
    source = f"ImageNet weights for {name}" if pretrained == "imagenet" else pretrained
    net_state = None if of_trunk else state

    def load_pretrained(net: nn.Module) -> None:
        if net_state is not None:
            load_into(net, net_state, name, source, entry.dropped_heads)

    trunk = entry.build(load_pretrained, large_feature_map, width, adl, variant)
    if of_trunk:
        load_trunk(trunk, state, source)
    return trunk
