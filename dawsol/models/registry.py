"""Building a backbone from its record (``dawsol.components.backbones``): its trunk with pretrained weights loaded,
its ImageNet state dict and its input normalisation."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from dawsol.components import known, load
from dawsol.components.backbones import BACKBONES, BackboneRecord, Normalization
from dawsol.errors import DawsolError
from dawsol.models.pretrained import load_into, load_trunk, pretrained_state, torchvision_state_dict
from dawsol.models.trunk import Trunk, TrunkBuilder, TrunkRequest


def backbone(name: str) -> BackboneRecord:
    """The record of backbone ``name``; a DawsolError listing the known ones otherwise."""
    return known("backbone", name, BACKBONES)


def normalization(name: str) -> Normalization:
    """The (mean, std) per RGB channel that backbone ``name`` expects its inputs normalised with."""
    return backbone(name).normalization


def imagenet_state(name: str) -> dict[str, Tensor]:
    """Backbone ``name``'s ImageNet state dict, in the layout of its unmodified network."""
    record = backbone(name)
    if record.torchvision_weights is not None:
        return torchvision_state_dict(name, record.torchvision_weights)
    if record.imagenet_loader is None:
        raise DawsolError(f"backbone {name} has no ImageNet weights: set model.pretrained to none or a state dict file")
    return load(record.imagenet_loader)()


def trunk_builder(name: str) -> TrunkBuilder:
    """The trunk builder backbone ``name``'s record refers to."""
    return load(backbone(name).builder)


def classifier_trunk(name: str, load_pretrained: Callable[[nn.Module], None]) -> Trunk:
    """The unmodified trunk whose features backbone ``name``'s ImageNet head was trained on (``imagenet_head``)."""
    reference = backbone(name).classifier_trunk
    if reference is None:
        raise ValueError(f"backbone {name} has no classifier trunk")
    return load(reference)(load_pretrained)


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
    record = backbone(name)
    state, of_trunk = pretrained_state(pretrained, lambda: imagenet_state(name))
    source = f"ImageNet weights for {name}" if pretrained == "imagenet" else pretrained
    net_state = None if of_trunk else state

    def load_pretrained(net: nn.Module) -> None:
        if net_state is not None:
            load_into(net, net_state, name, source, record.dropped_heads)

    trunk = trunk_builder(name)(TrunkRequest(load_pretrained, large_feature_map, width, adl, variant))
    if of_trunk:
        load_trunk(trunk, state, source)
    return trunk
