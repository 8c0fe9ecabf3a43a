"""The WSOL method registry: what each method of params.yaml changes in training, and its settings bound to it.

A method changes the input batch (HaS, CutMix: ``augment``), the trunk (ADL: ``trunk_layer``,
placed by ``dawsol.models``), adds a head with its own losses and CAM and takes its own trunk
variant (ACoL, SPG: ``head``, ``trunk_variant``; ``dawsol.wsol.heads``) or nothing (CAM). The
registry's keys are the schema's WSOL methods (a test holds them equal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dawsol.config import WSOLSettings
from dawsol.wsol.adl import ADL
from dawsol.wsol.augment import MixedBatch, cutmix, hide_and_seek
from dawsol.wsol.heads import Head, TrunkFacts, acol_head, spg_head

Augment = Callable[[Tensor, Tensor, Mapping[str, Any], torch.Generator], MixedBatch]


def _adl_layer(options: Mapping[str, Any]) -> nn.Module:
    return ADL(drop_rate=float(options["drop_rate"]), threshold=float(options["threshold"]))


@dataclass(frozen=True)
class WSOLMethod:
    """One WSOL method: its input augmentation, the layer it adds to the trunk, its head (None where it has
    none) and the trunk variant it takes (``dawsol.models.backbones.TRUNK_VARIANTS``)."""

    augment: Augment | None = None
    trunk_layer: Callable[[Mapping[str, Any]], nn.Module] | None = None
    head: Callable[[Mapping[str, Any], TrunkFacts], Head] | None = None
    trunk_variant: str = "cam"


WSOL_METHODS: dict[str, WSOLMethod] = {
    "cam": WSOLMethod(),
    "has": WSOLMethod(augment=hide_and_seek),
    "cutmix": WSOLMethod(augment=cutmix),
    "adl": WSOLMethod(trunk_layer=_adl_layer),
    "acol": WSOLMethod(head=acol_head, trunk_variant="acol"),
    "spg": WSOLMethod(head=spg_head, trunk_variant="spg"),
}


@dataclass(frozen=True)
class InputAugmentation:
    """A cell's input augmentation: its method's function with the cell's options."""

    augment: Augment
    options: Mapping[str, Any]

    def apply(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> MixedBatch:
        """Augment one batch; ``images`` are not modified in place."""
        return self.augment(images, labels, self.options, generator)


def input_augmentation(wsol: WSOLSettings) -> InputAugmentation | None:
    """The augmentation of ``wsol.method``, or None when it has none (CAM, ADL)."""
    augment = WSOL_METHODS[wsol.method].augment
    return None if augment is None else InputAugmentation(augment, dict(wsol.options))


def trunk_layer(wsol: WSOLSettings) -> nn.Module | None:
    """The layer ``wsol.method`` adds inside the trunk (ADL), or None."""
    build = WSOL_METHODS[wsol.method].trunk_layer
    return None if build is None else build(wsol.options)


def method_head(wsol: WSOLSettings, facts: TrunkFacts) -> Head | None:
    """The head ``wsol.method`` puts between the trunk and the score estimator (ACoL, SPG), or None."""
    build = WSOL_METHODS[wsol.method].head
    return None if build is None else build(wsol.options, facts)


def trunk_variant(wsol: WSOLSettings) -> str:
    """The trunk variant ``wsol.method`` takes: "cam", or its own ("acol", "spg")."""
    return WSOL_METHODS[wsol.method].trunk_variant
