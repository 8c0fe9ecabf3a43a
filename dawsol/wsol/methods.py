"""Applying a WSOL method's record (``dawsol.components.wsol_methods``) to a cell: its input augmentation, the layer
it adds to the trunk, its head and its trunk variant, each bound to the cell's options."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dawsol.components import load
from dawsol.components.wsol_methods import WSOL_METHODS
from dawsol.config import WSOLSettings
from dawsol.wsol.augment import MixedBatch
from dawsol.wsol.heads import Head, TrunkFacts

Augment = Callable[[Tensor, Tensor, Mapping[str, Any], torch.Generator], MixedBatch]


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
    return None if augment is None else InputAugmentation(load(augment), dict(wsol.options))


def trunk_layer(wsol: WSOLSettings) -> nn.Module | None:
    """The layer ``wsol.method`` adds inside the trunk (ADL), or None."""
    build = WSOL_METHODS[wsol.method].trunk_layer
    return None if build is None else load(build)(wsol.options)


def method_head(wsol: WSOLSettings, facts: TrunkFacts) -> Head | None:
    """The head ``wsol.method`` puts between the trunk and the score estimator (ACoL, SPG), or None."""
    build = WSOL_METHODS[wsol.method].head
    return None if build is None else load(build)(wsol.options, facts)


def trunk_variant(wsol: WSOLSettings) -> str:
    """The trunk variant ``wsol.method`` takes: "cam", or its own ("acol", "spg")."""
    return WSOL_METHODS[wsol.method].trunk_variant
