"""Feature trunks with the WSOL benchmark's CAM modifications, built on torchvision's definitions.

Each trunk maps images to pixel features ``[B, D, h, w]`` (post-ReLU) and names the layers it
adds to the pretrained network (``new_layers``), which train at the classifier's learning rate
where the official code does so. Pretrained weights load into torchvision's unmodified network
first, so the state-dict keys stay torchvision's (e.g. ``layer3.0.conv1.weight``).

| backbone | D | 224 px | 224 px, large map | modifications |
|---|---|---|---|---|
| vgg16 | 1024 | 14x14 | 28x28 | no pool5 (and no pool4 with the large map), conv6 512->1024 + ReLU |
| resnet50 | 2048 | 14x14 | 28x28 | layer4 stride 1, layer3 stride 1 with the large map |
| resnet18 | 512*width | 28x28 | 56x56 | as resnet50, and layer2 stride 1 (small inputs: 16x16 at 64 px) |
| inception_v3 | 1024 | 14x14 | 28x28 | SPG-style: stem pools 3x3/2 pad 1, Mixed_6a stride 1, SPG_A3_1b/2b |

ACoL and SPG change some trunks (the official variants, docs/wsol-methods.md): VGG16's ACoL trunk
has 3x3 pools (no conv6, D 512, a 3x3 average pool on the features), its SPG trunk renames conv4
and conv5 ``SPG_A_1`` and ``SPG_A_2`` and adds ``SPG_A_3`` (D 512); InceptionV3's ACoL trunk ends
at Mixed_6e (D 768). Every trunk names the two places SPG's side branches read (``spg_taps``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.inception import InceptionB
from torchvision.models.resnet import BasicBlock, ResNet

from dawsol.errors import DawsolError
from dawsol.wsol.adl import ADL

TRUNK_VARIANTS = ("cam", "acol", "spg")


class Tap(NamedTuple):
    """Where an SPG side branch reads the trunk: the ``output`` (or ``input``) of module ``path``, ``channels`` wide."""

    path: str
    channels: int
    at_input: bool = False


class Trunk(nn.Module):
    """A feature extractor: ``forward(images) -> features [B, D, h, w]``.

    ``stages()`` lists its stages in input order (each a tuple of parameter-name prefixes);
    ``freeze(n)`` fixes the first ``n``: no gradients (so autograd skips them), batch norm in
    eval mode for good, and the optimizer never sees them (``model.frozen_stages``).
    """

    feature_dim: int
    new_layers: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()
    acol_head_init: str = "xavier"  # how ACoL's heads are initialised: "xavier", or "he" (ResNet, as the official code)

    def spg_taps(self) -> tuple[Tap, Tap] | None:
        """The two trunk places SPG's side branches B1 and B2 read, shallow first (None: not defined here)."""
        return None

    def new_layer_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the layers added to the pretrained network."""
        for name, param in self.named_parameters():
            if name.split(".")[0] in self.new_layers:
                yield name, param

    def stages(self) -> list[tuple[str, ...]]:
        """The trunk's stages in input order, as parameter-name prefixes (empty: it cannot be frozen by stage)."""
        return []

    def freeze(self, count: int) -> None:
        """Freeze the first ``count`` stages; a DawsolError if the trunk has fewer (or none to freeze)."""
        if count == 0:
            return
        stages = self.stages()
        if count > len(stages):
            raise DawsolError(
                f"model.frozen_stages is {count} but this trunk has {len(stages)} stage(s) to freeze "
                f"({type(self).__name__}); lower it"
            )
        self.frozen = tuple(prefix for stage in stages[:count] for prefix in stage)
        for name, param in self.named_parameters():
            if _under(name, self.frozen):
                param.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Trunk:
        super().train(mode)
        for name, module in self.named_modules():
            if self.frozen and _under(name, self.frozen):
                module.eval()
        return self


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _block_channels(block: nn.Module) -> int:
    """The output channels of a ResNet block (a Bottleneck's conv3 or a BasicBlock's conv2)."""
    last = getattr(block, "conv3", None) or block.conv2
    return last.out_channels


def _stride_one(layer: nn.Sequential) -> None:
    """Set every stride-2 convolution of a ResNet stage's first block (conv and shortcut) to stride 1."""
    for module in layer[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)


def _scaled_resnet18(width: float) -> ResNet:
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

    def __init__(self, net: ResNet, stride_one: tuple[str, ...], adl: ADL | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        for name in stride_one:
            _stride_one(getattr(self, name))
        self.feature_dim = net.fc.in_features
        self.adl_after = {("layer3", 0), ("layer4", 0), ("layer4", len(self.layer4) - 1)} if adl is not None else set()
        self.adl = adl

    acol_head_init = "he"

    def stages(self) -> list[tuple[str, ...]]:
        return [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]

    def spg_taps(self) -> tuple[Tap, Tap]:
        """layer3's first block and layer3's output (the official SPG_A1 and SPG_A2 split of layer3)."""
        channels = _block_channels(self.layer3[-1])
        return Tap("layer3.0", channels), Tap(f"layer3.{len(self.layer3) - 1}", channels)

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for index, block in enumerate(getattr(self, stage)):
                x = block(x)
                if (stage, index) in self.adl_after:
                    x = self.adl(x)
        return x


# torchvision's vgg16 ``features`` indices: pool1, pool2, pool3, the ReLU after conv4_3, pool4, the ReLU after
# conv5_3, pool5; conv4 and conv5 are indices 17-22 and 24-29
_VGG_POOL1, _VGG_POOL2, _VGG_POOL3, _VGG_CONV4_3, _VGG_POOL4, _VGG_CONV5_3, _VGG_POOL5 = 4, 9, 16, 22, 23, 29, 30
_VGG_CONV4, _VGG_CONV5 = slice(17, 23), slice(24, 30)


class VGGTrunk(Trunk):
    """VGG16 conv layers without pool5 (and pool4 with the large map), then conv6 512->1024 + ReLU.

    Removed pools become ``Identity`` so the pretrained ``features.<i>`` keys keep their indices.
    ADL after pool3, after conv4_3 and after conv5_3.
    """

    new_layers = ("conv6",)

    def __init__(self, features: nn.Sequential, large_feature_map: bool, adl: ADL | None = None) -> None:
        super().__init__()
        features[_VGG_POOL5] = nn.Identity()
        if large_feature_map:
            features[_VGG_POOL4] = nn.Identity()
        self.features = features
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(self.conv6.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv6.bias)
        self.feature_dim = 1024
        self.adl_after = {_VGG_POOL3, _VGG_CONV4_3, _VGG_CONV5_3} if adl is not None else set()
        self.adl = adl

    def forward(self, images: Tensor) -> Tensor:
        x = images
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.adl_after:
                x = self.adl(x)
        return F.relu(self.conv6(x))


class VGGACoLTrunk(Trunk):
    """ACoL's VGG16: every pool 3x3 with padding 1 (stride 2; pool4 stride 1 with the large map, pool5 stride 1),
    no conv6, then a 3x3 stride-1 average pool: ``[B, 512, h, w]`` at the CAM trunk's size."""

    def __init__(self, features: nn.Sequential, large_feature_map: bool) -> None:
        super().__init__()
        for index in (_VGG_POOL1, _VGG_POOL2, _VGG_POOL3, _VGG_POOL4):
            features[index] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        if large_feature_map:
            features[_VGG_POOL4] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        features[_VGG_POOL5] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.features = features
        self.feature_dim = 512

    def forward(self, images: Tensor) -> Tensor:
        return F.avg_pool2d(self.features(images), kernel_size=3, stride=1, padding=1)


class VGGSPGTrunk(Trunk):
    """SPG's VGG16: conv1-conv3 (``features``), conv4 as ``SPG_A_1``, a 3x3/2 max-pool (``pool4``; none with the
    large map), conv5 as ``SPG_A_2``, then the new ``SPG_A_3`` (two 3x3 512->512 + ReLU): ``[B, 512, h, w]``.

    conv4 and conv5 keep their ImageNet weights under the official names (``SPG_A_1.0`` is ``features.17``) and,
    as the official rule has it, train at the classifier's rate with the new layers.
    """

    new_layers = ("SPG_A_1", "SPG_A_2", "SPG_A_3")

    def __init__(self, features: nn.Sequential, large_feature_map: bool) -> None:
        super().__init__()
        layers = list(features)
        self.features = nn.Sequential(*layers[: _VGG_POOL3 + 1])
        self.SPG_A_1 = nn.Sequential(*layers[_VGG_CONV4])
        self.pool4 = nn.Identity() if large_feature_map else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.SPG_A_2 = nn.Sequential(*layers[_VGG_CONV5])
        self.SPG_A_3 = nn.Sequential(
            nn.Conv2d(512, 512, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, 512, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        for module in self.SPG_A_3:
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.feature_dim = 512

    def spg_taps(self) -> tuple[Tap, Tap]:
        """After conv4 and its pool, and after conv5."""
        return Tap("pool4", 512), Tap("SPG_A_2", 512)

    def forward(self, images: Tensor) -> Tensor:
        x = self.pool4(self.SPG_A_1(self.features(images)))
        return self.SPG_A_3(self.SPG_A_2(x))


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

    Dropout 0.5 precedes each new layer and follows the last one in training, so the pixel
    features are post-dropout as in the official code. The max-pool after Mixed_5d is skipped
    with the large map. ADL after Mixed_5d, after Mixed_6e and after SPG_A3_2b. ACoL's variant
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
        if spg_layers:
            self.new_layers = ("SPG_A3_1b", "SPG_A3_2b")
            self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
            self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
            for layer in (self.SPG_A3_1b, self.SPG_A3_2b):
                nn.init.kaiming_normal_(layer[0].weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer[0].bias)
            self.feature_dim = 1024

    def _adl(self, x: Tensor) -> Tensor:
        return self.adl(x) if self.adl is not None else x

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
        x = self.SPG_A3_1b(F.dropout(x, 0.5, self.training))
        x = self.SPG_A3_2b(F.dropout(x, 0.5, self.training))
        return self._adl(F.dropout(x, 0.5, self.training))


# (load_pretrained, large_feature_map, width, adl, variant): ``variant`` is one of TRUNK_VARIANTS, the WSOL method's
TrunkBuilder = Callable[[Callable[[nn.Module], None], bool, float, "ADL | None", str], Trunk]


def resnet_trunk(name: str) -> TrunkBuilder:
    """The builder of ``resnet18`` (channels scaled by ``width``) or ``resnet50``."""

    def build(
        load_pretrained: Callable[[nn.Module], None],
        large_feature_map: bool,
        width: float,
        adl: ADL | None,
        variant: str = "cam",
    ) -> Trunk:
        """One trunk for every variant: ACoL's heads read layer4, SPG's branches layer3 (``spg_taps``)."""
        net = _scaled_resnet18(width) if name == "resnet18" else torchvision.models.resnet50()
        load_pretrained(net)
        stride_one = ("layer4", "layer3") if large_feature_map else ("layer4",)
        if name == "resnet18":
            stride_one += ("layer2",)
        return ResNetTrunk(net, stride_one, adl)

    return build


def vgg16_trunk(
    load_pretrained: Callable[[nn.Module], None],
    large_feature_map: bool,
    width: float,
    adl: ADL | None,
    variant: str = "cam",
) -> Trunk:
    """VGG16's convolutions with the CAM modifications, or ACoL's or SPG's."""
    net = nn.Module()
    net.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    for module in net.features.modules():  # "he" initialisation, as torchvision's VGG
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    load_pretrained(net)
    if variant == "acol":
        return VGGACoLTrunk(net.features, large_feature_map)
    if variant == "spg":
        return VGGSPGTrunk(net.features, large_feature_map)
    return VGGTrunk(net.features, large_feature_map, adl)


def inception_v3_trunk(
    load_pretrained: Callable[[nn.Module], None],
    large_feature_map: bool,
    width: float,
    adl: ADL | None,
    variant: str = "cam",
) -> Trunk:
    """InceptionV3 with the SPG-style CAM modifications (ACoL's variant ends at Mixed_6e)."""
    with torch.no_grad():
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    load_pretrained(net)
    return InceptionTrunk(net, large_feature_map, adl, spg_layers=variant != "acol")
