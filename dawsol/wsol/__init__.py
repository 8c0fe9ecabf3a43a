"""WSOL methods: CAM (the plain pipeline), HaS and CutMix on the input, ADL inside the backbone."""

from dawsol.wsol.adl import ADL
from dawsol.wsol.augment import InputAugmentation, MixedBatch

__all__ = ["ADL", "InputAugmentation", "MixedBatch"]
