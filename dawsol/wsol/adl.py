"""Attention-based Dropout Layer (ADL, Choe & Shim, CVPR 2019).

ADL lives inside the backbone; ``dawsol.models`` places it (reference placements in
``docs/architecture.md``). It is a no-op in eval mode and has no parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


class ADL(nn.Module):
    """Multiply features by a drop mask or an importance map, chosen once per forward call.

    The self-attention is the channel mean. The drop mask zeroes positions whose attention is
    at least ``threshold`` times the image's maximum; the importance map is the attention's
    sigmoid. With probability ``drop_rate`` the whole batch gets the drop mask, otherwise the
    importance map. The draw uses the global (seeded) torch RNG on the features' device, so it
    needs no host synchronisation.
    """

    def __init__(self, drop_rate: float, threshold: float) -> None:
        super().__init__()
        if not 0.0 <= drop_rate <= 1.0 or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"ADL drop_rate and threshold must lie in [0, 1], got {drop_rate}, {threshold}")
        self.drop_rate = drop_rate
        self.threshold = threshold

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        attention = x.mean(dim=1, keepdim=True)
        peak = attention.amax(dim=(2, 3), keepdim=True)
        drop_mask = (attention < self.threshold * peak).to(x.dtype)
        importance = torch.sigmoid(attention)
        use_drop = (torch.rand((), device=x.device) < self.drop_rate).to(x.dtype)
        return x * (use_drop * drop_mask + (1.0 - use_drop) * importance)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, threshold={self.threshold}"


def adl_layer(options: Mapping[str, Any]) -> ADL:
    """The ADL layer of a cell's ``wsol.adl`` options."""
    return ADL(drop_rate=float(options["drop_rate"]), threshold=float(options["threshold"]))
