"""WSOL methods: CAM (the plain pipeline), HaS and CutMix on the input, ADL inside the backbone, ACoL and SPG heads."""

from dawsol.components.wsol_methods import WSOL_METHODS
from dawsol.wsol.adl import ADL
from dawsol.wsol.augment import MixedBatch
from dawsol.wsol.heads import Head, TrunkFacts
from dawsol.wsol.methods import (
    InputAugmentation,
    input_augmentation,
    method_head,
    trunk_layer,
    trunk_variant,
)

__all__ = [
    "ADL",
    "WSOL_METHODS",
    "Head",
    "InputAugmentation",
    "MixedBatch",
    "TrunkFacts",
    "input_augmentation",
    "method_head",
    "trunk_layer",
    "trunk_variant",
]
