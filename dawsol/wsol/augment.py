"""Input-level WSOL methods for training: HaS (hide-and-seek) and CutMix.

``InputAugmentation.create(wsol)`` gives the augmentation of ``wsol.method`` (None for CAM and
ADL, which lives inside the backbone); ``apply(images, labels, generator)`` returns a
``MixedBatch``. The generator is a CPU
``torch.Generator``: every random decision is drawn from it on the host (a few numbers per
batch), so runs are reproducible on any device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from dawsol.config import WSOLSettings


class MixedBatch(NamedTuple):
    """A training batch after the input augmentation.

    With CutMix, ``labels_b`` are the pasted images' labels and ``weight_a`` the unpasted area
    fraction; otherwise ``labels_b`` is None and ``weight_a`` 1.
    """

    images: Tensor
    labels_a: Tensor
    labels_b: Tensor | None
    weight_a: float


class InputAugmentation:
    """HaS or CutMix on a training batch, with the hyperparameters of ``wsol.options``."""

    METHODS = ("has", "cutmix")

    def __init__(self, wsol: WSOLSettings) -> None:
        if wsol.method not in self.METHODS:
            raise ValueError(f"{wsol.method!r} has no input augmentation (only {', '.join(self.METHODS)})")
        self.method = wsol.method
        self.options = dict(wsol.options)

    @classmethod
    def create(cls, wsol: WSOLSettings) -> InputAugmentation | None:
        """The augmentation of ``wsol.method``, or None when it has none (CAM, ADL)."""
        return cls(wsol) if wsol.method in cls.METHODS else None

    def apply(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> MixedBatch:
        """Augment one batch; ``images`` are not modified in place."""
        if self.method == "has":
            return MixedBatch(self._hide(images, generator), labels, None, 1.0)
        return self._cutmix(images, labels, generator)

    def _hide(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Zero each ``grid_size`` x ``grid_size`` pixel cell with probability ``drop_rate``."""
        grid, drop_rate = int(self.options["grid_size"]), float(self.options["drop_rate"])
        if grid == 0:
            return images
        batch, _, height, width = images.shape
        cells_h, cells_w = math.ceil(height / grid), math.ceil(width / grid)
        keep = (torch.rand(batch, 1, cells_h, cells_w, generator=generator) >= drop_rate).to(images.dtype)
        keep = keep.repeat_interleave(grid, dim=2).repeat_interleave(grid, dim=3)[:, :, :height, :width]
        return images * keep.to(images.device)

    def _cutmix(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> MixedBatch:
        """Paste a Beta(beta, beta)-sized box from a permuted batch, with probability ``prob``."""
        beta, prob = float(self.options["beta"]), float(self.options["prob"])
        if torch.rand((), generator=generator).item() >= prob:
            return MixedBatch(images, labels, None, 1.0)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator)))
        lam = float(rng.beta(beta, beta))
        _, _, height, width = images.shape
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        permutation = torch.randperm(images.shape[0], generator=generator).to(images.device)
        mixed = images.clone()
        mixed[:, :, y0:y1, x0:x1] = images[permutation, :, y0:y1, x0:x1]
        weight_a = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        return MixedBatch(mixed, labels, labels[permutation], weight_a)
