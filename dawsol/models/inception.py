"""The Inception family's trunk (inception_v3) on torchvision's network, with the SPG-style CAM modifications.

| backbone | D | 224 px | 224 px, large map | modifications |
|---|---|---|---|---|
| inception_v3 | 1024 | 14x14 | 28x28 | SPG-style: stem pools 3x3/2 pad 1, Mixed_6a stride 1, SPG_A3_1b/2b |

ACoL's variant ends at Mixed_6e (D 768). The new layers SPG_A3_1b/2b are xavier-uniform initialised
with zero bias, and only the trunk without ADL drops out around them, as the official CAM, SPG and
ADL trunks have it (wsolevaluation's ``InceptionCam``, ``InceptionSpg``, ``InceptionAdl``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.inception import InceptionB

from dawsol.components.backbones import register_backbone
from dawsol.models.trunk import Tap, Trunk, TrunkRequest
from dawsol.wsol.adl import ADL


class _InceptionBStride1(InceptionB):
    """torchvision's InceptionB (Mixed_6a) at stride 1 with padding 1, as the SPG trunk has it."""

    def __init__(self, in_channels: int) -> None:
        super().__init__(in_channels)
        for conv in (self.branch3x3.conv, self.branch3x3dbl_3.conv):
            conv.stride, conv.padding = (1, 1), (1, 1)

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return [branch3x3, branch3x3dbl, branch_pool]


class InceptionTrunk(Trunk):
    """InceptionV3 to Mixed_6e (SPG-style), then SPG_A3_1b (768->1024) and SPG_A3_2b (1024->1024).

    Without ADL, dropout 0.5 precedes each new layer and follows the last one in training, so the
    pixel features are post-dropout as in the official code; with ADL there is no dropout, as in the
    official ADL trunk. The max-pool after Mixed_5d is skipped with the large map. ADL after
    Mixed_5d, after Mixed_6e and after SPG_A3_2b. ACoL's variant
    (``spg_layers=False``) ends at Mixed_6e: ``[B, 768, h, w]``, no new layers, no dropout.
    """

    def __init__(
        self,
        net: torchvision.models.Inception3,
        large_feature_map: bool,
        adl: ADL | None = None,
        spg_layers: bool = True,
    ) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = net.Conv2d_1a_3x3
        self.Conv2d_1a_3x3.conv.padding = (1, 1)
        self.Conv2d_2a_3x3, self.Conv2d_2b_3x3 = net.Conv2d_2a_3x3, net.Conv2d_2b_3x3
        self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = net.Conv2d_3b_1x1, net.Conv2d_4a_3x3
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = net.Mixed_5b, net.Mixed_5c, net.Mixed_5d
        self.Mixed_6a = _InceptionBStride1(288)
        self.Mixed_6a.load_state_dict(net.Mixed_6a.state_dict())
        self.Mixed_6b, self.Mixed_6c = net.Mixed_6b, net.Mixed_6c
        self.Mixed_6d, self.Mixed_6e = net.Mixed_6d, net.Mixed_6e
        self.spg_layers = spg_layers
        self.large_feature_map = large_feature_map
        self.feature_dim = 768
        self.adl = adl
        if not spg_layers:
            self.own_target_layer = "Mixed_6d"  # this variant has no SPG_A3_1b, the CAM trunk's default
        if spg_layers:
            self.new_layers = ("SPG_A3_1b", "SPG_A3_2b")
            self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
            self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
            for layer in (self.SPG_A3_1b, self.SPG_A3_2b):
                nn.init.xavier_uniform_(layer[0].weight)
                nn.init.zeros_(layer[0].bias)
            self.feature_dim = 1024

    def _adl(self, x: Tensor) -> Tensor:
        return self.adl(x) if self.adl is not None else x

    def _dropout(self, x: Tensor) -> Tensor:
        """Dropout 0.5 in training around the new layers; none with ADL (the official ADL trunk has none)."""
        return x if self.adl is not None else F.dropout(x, 0.5, self.training)

    def spg_taps(self) -> tuple[Tap, Tap]:
        """Mixed_6a's input (after Mixed_5d and its pool) and, as the official code has it, Mixed_6d's output
        (not Mixed_6e's)."""
        return Tap("Mixed_6a", 288, at_input=True), Tap("Mixed_6d", 768)

    def forward(self, images: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(images)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self._adl(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
        if not self.large_feature_map:
            x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
        x = self.Mixed_6a(x)
        x = self._adl(self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x)))))
        if not self.spg_layers:
            return x
        x = self.SPG_A3_1b(self._dropout(x))
        x = self.SPG_A3_2b(self._dropout(x))
        return self._adl(self._dropout(x))


@register_backbone(
    "inception_v3",
    "InceptionV3",
    dropped_heads=("fc.", "AuxLogits.", "Mixed_7"),
    target_layer="SPG_A3_1b",
    torchvision_weights="Inception_V3_Weights",
    official_formats=("da-wsol", "wsolevaluation"),
)
def inception_v3_trunk(request: TrunkRequest) -> Trunk:
    """InceptionV3 with the SPG-style CAM modifications (ACoL's variant ends at Mixed_6e)."""
    with torch.no_grad():
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    request.load_pretrained(net)
    return InceptionTrunk(net, request.large_feature_map, request.adl, spg_layers=request.variant != "acol")
