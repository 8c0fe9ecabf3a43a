"""The ResNet family's CAM trunks (resnet18, resnet50) on torchvision's networks.

| backbone | D | 224 px | 224 px, large map | modifications |
|---|---|---|---|---|
| resnet50 | 2048 | 14x14 | 28x28 | layer4 stride 1, layer3 stride 1 with the large map |
| resnet18 | 512*width | 28x28 | 56x56 | as resnet50, and layer2 stride 1 (small inputs: 16x16 at 64 px) |

One trunk serves every WSOL method: ACoL's heads read layer4, SPG's branches layer3 (``spg_taps``).
"""

from __future__ import annotations

import re
from collections.abc import Collection

import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from dawsol.components.backbones import register_backbone
from dawsol.models.trunk import UNUSED_OFFICIAL_WEIGHT, Tap, Trunk, TrunkRequest
from dawsol.wsol.adl import ADL

# ADL ResNet50 in the official files: the ADL layers sit inside the stages, so the block indices skip them
RESNET_ADL_BLOCKS: dict[str, dict[int, int]] = {
    "layer3": {0: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5},
    "layer4": {0: 0, 2: 1, 3: 2},
}
_STAGE_BLOCK = re.compile(r"^(layer[1-4])\.(\d+)\.(.+)$")


def _block_channels(block: nn.Module) -> int:
    """The output channels of a ResNet block (a Bottleneck's conv3 or a BasicBlock's conv2)."""
    last = getattr(block, "conv3", None) or block.conv2
    return last.out_channels


def _stride_one(layer: nn.Sequential) -> None:
    """Set every stride-2 convolution of a ResNet stage's first block (conv and shortcut) to stride 1."""
    for module in layer[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)


def scaled_resnet18(width: float) -> ResNet:
    """torchvision's ResNet-18 with every channel count scaled by ``width`` (1.0 is torchvision's)."""
    net = torchvision.models.resnet18()
    if width == 1.0:
        return net
    channels = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
    net.inplanes = channels[0]
    net.conv1 = nn.Conv2d(3, channels[0], kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(channels[0])
    net.layer1 = net._make_layer(BasicBlock, channels[0], 2)
    net.layer2 = net._make_layer(BasicBlock, channels[1], 2, stride=2)
    net.layer3 = net._make_layer(BasicBlock, channels[2], 2, stride=2)
    net.layer4 = net._make_layer(BasicBlock, channels[3], 2, stride=2)
    net.fc = nn.Linear(channels[3], 1000)
    for module in net.modules():  # torchvision's initialisation, for the rebuilt layers
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return net


class ResNetTrunk(Trunk):
    """ResNet up to layer4; ADL after layer3[0], layer4[0] and layer4's last block."""

    acol_head_init = "he"
    iterated = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, net: ResNet, stride_one: tuple[str, ...], adl: ADL | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        for name in stride_one:
            _stride_one(getattr(self, name))
        self.feature_dim = net.fc.in_features
        self.adl_after = {("layer3", 0), ("layer4", 0), ("layer4", len(self.layer4) - 1)} if adl is not None else set()
        self.adl = adl

    def stages(self) -> list[tuple[str, ...]]:
        return [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]

    def spg_taps(self) -> tuple[Tap, Tap]:
        """layer3's first block and layer3's output (the official SPG_A1 and SPG_A2 split of layer3)."""
        channels = _block_channels(self.layer3[-1])
        return Tap("layer3.0", channels), Tap(f"layer3.{len(self.layer3) - 1}", channels)

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        for stage in self.iterated:
            for index, block in enumerate(getattr(self, stage)):
                x = block(x)
                if (stage, index) in self.adl_after:
                    x = self.adl(x)
        return x


@register_backbone(
    "resnet18",
    "ResNet18",
    dropped_heads=("fc.",),
    target_layer="layer3",
    torchvision_weights="ResNet18_Weights",
    width_multiplier=True,
)
def resnet18_trunk(request: TrunkRequest) -> Trunk:
    """ResNet-18 with its channels scaled by ``width``, layer2 at stride 1 too (one trunk for every variant)."""
    net = scaled_resnet18(request.width)
    request.load_pretrained(net)
    return ResNetTrunk(net, (*_stride_one_stages(request.large_feature_map), "layer2"), request.adl)


@register_backbone(
    "resnet50",
    "ResNet50",
    dropped_heads=("fc.",),
    target_layer="layer3",  # the official extractors' default
    torchvision_weights="ResNet50_Weights",
    official_formats=("da-wsol", "wsolevaluation"),
    official_names="official_resnet50_name",
    official_hint="official_resnet50_hint",
)
def resnet50_trunk(request: TrunkRequest) -> Trunk:
    """torchvision's ResNet-50 (one trunk for every variant)."""
    net = torchvision.models.resnet50()
    request.load_pretrained(net)
    return ResNetTrunk(net, _stride_one_stages(request.large_feature_map), request.adl)


def _stride_one_stages(large_feature_map: bool) -> tuple[str, ...]:
    """The stages set to stride 1: layer4, and layer3 with the large map."""
    return ("layer4", "layer3") if large_feature_map else ("layer4",)


def official_resnet50_name(name: str, adl: bool, large_feature_map: bool) -> str | None:
    """The trunk name of an official file's ResNet50 weight ``name``: itself, or with ADL the block index that skips
    the official stages' ADL children (None for a block the trunk has not); the unused ``fc.*`` head of BagCAMs' ADL
    extractor is ``UNUSED_OFFICIAL_WEIGHT``."""
    if adl and name.startswith("fc."):
        return UNUSED_OFFICIAL_WEIGHT
    match = _STAGE_BLOCK.match(name) if adl else None
    if not match or match.group(1) not in RESNET_ADL_BLOCKS:
        return name
    block = RESNET_ADL_BLOCKS[match.group(1)].get(int(match.group(2)))
    return None if block is None else f"{match.group(1)}.{block}.{match.group(3)}"


def official_resnet50_hint(names: Collection[str], adl: bool, large_feature_map: bool) -> str:
    """Where an official ResNet50 file's block indices are those of the other WSOL method's: which ('' if none)."""
    if not adl and "layer4.3.conv1.weight" in names:
        return "; its layer3/layer4 block indices are those of an ADL ResNet50: import it into an adl cell"
    if adl and "layer4.1.conv1.weight" in names:
        return "; its layer3/layer4 block indices are those of a ResNet50 without ADL: use a cell of its method"
    return ""
