"""Input-level WSOL methods for training: HaS (hide-and-seek) and CutMix.

Each is a function ``(images, labels, options, generator) -> MixedBatch`` (``options``: the
method's block of params.yaml); ``dawsol.wsol.methods`` binds one to a cell's settings. The
generator is a CPU ``torch.Generator``: every random decision is drawn from it on the host (a
few numbers per batch), so runs are reproducible on any device. The input is never modified in place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor


class MixedBatch(NamedTuple):
    """A training batch after the input augmentation.

    With CutMix, ``labels_b`` are the pasted images' labels and ``weight_a`` the unpasted area
    fraction; otherwise ``labels_b`` is None and ``weight_a`` 1.
    """

    images: Tensor
    labels_a: Tensor
    labels_b: Tensor | None
    weight_a: float


def hide_and_seek(images: Tensor, labels: Tensor, options: Mapping[str, Any], generator: torch.Generator) -> MixedBatch:
    """HaS: zero each ``grid_size`` x ``grid_size`` pixel cell with probability ``drop_rate``."""
    grid, drop_rate = int(options["grid_size"]), float(options["drop_rate"])
    if grid == 0:
        return MixedBatch(images, labels, None, 1.0)
    batch, _, height, width = images.shape
    cells_h, cells_w = math.ceil(height / grid), math.ceil(width / grid)
    keep = (torch.rand(batch, 1, cells_h, cells_w, generator=generator) >= drop_rate).to(images.dtype)
    keep = keep.repeat_interleave(grid, dim=2).repeat_interleave(grid, dim=3)[:, :, :height, :width]
    return MixedBatch(images * keep.to(images.device), labels, None, 1.0)


def cutmix(images: Tensor, labels: Tensor, options: Mapping[str, Any], generator: torch.Generator) -> MixedBatch:
    """CutMix: paste a Beta(beta, beta)-sized box from a permuted batch, with probability ``prob``."""
    beta, prob = float(options["beta"]), float(options["prob"])
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
