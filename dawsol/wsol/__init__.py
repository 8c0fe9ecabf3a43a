"""WSOL methods: CAM (the plain pipeline), HaS and CutMix on the input, ADL inside the backbone."""

from dawsol.wsol.adl import ADL
from dawsol.wsol.augment import MixedBatch
from dawsol.wsol.methods import WSOL_METHODS, InputAugmentation, input_augmentation, trunk_layer

__all__ = ["ADL", "WSOL_METHODS", "InputAugmentation", "MixedBatch", "input_augmentation", "trunk_layer"]
