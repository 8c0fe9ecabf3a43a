"""The VGG family's trunks (vgg16) on torchvision's definition: the CAM trunk and ACoL's and SPG's variants.

| backbone | D | 224 px | 224 px, large map | modifications |
|---|---|---|---|---|
| vgg16 | 1024 | 14x14 | 28x28 | no pool5 (and no pool4 with the large map), conv6 512->1024 + ReLU |

ACoL's trunk has 3x3 pools (no conv6, D 512, a 3x3 average pool on the features), SPG's renames
conv4 and conv5 ``SPG_A_1`` and ``SPG_A_2`` and adds ``SPG_A_3`` (D 512) (docs/wsol-methods.md).
"""

from __future__ import annotations

import re
from collections.abc import Collection

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from dawsol.components.backbones import register_backbone
from dawsol.models.trunk import Tap, Trunk, TrunkRequest
from dawsol.wsol.adl import ADL

# VGG16's 13 convolutions at dawsol's (torchvision's) ``features`` indices, and at wsolevaluation's files':
# removed pools are absent there and ADL layers take an index, so the indices depend on both settings.
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_FILE_CONVS: dict[tuple[bool, bool], tuple[int, ...]] = {  # (adl, large_feature_map) -> indices
    (False, False): VGG_CONVS,
    (False, True): (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 23, 25, 27),
    (True, False): (0, 2, 5, 7, 10, 12, 14, 18, 20, 22, 26, 28, 30),
    (True, True): (0, 2, 5, 7, 10, 12, 14, 18, 20, 22, 25, 27, 29),
}
_FEATURE = re.compile(r"^features\.(\d+)\.(.+)$")

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
    iterated = ("features",)
    guided_functional = ("conv6",)  # a module in the official trunk, whose ReLU is functional here

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
    own_target_layer = "SPG_A_2"  # conv5, where the CAM trunk's default (``features``, up to conv5) ends

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


@register_backbone(
    "vgg16",
    "VGG16",
    dropped_heads=("classifier.",),
    target_layer="features",
    torchvision_weights="VGG16_Weights",
    official_formats=("wsolevaluation",),
    official_names="official_vgg16_name",
    official_hint="official_vgg16_hint",
)
def vgg16_trunk(request: TrunkRequest) -> Trunk:
    """VGG16's convolutions with the CAM modifications, or ACoL's or SPG's."""
    net = nn.Module()
    net.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    for module in net.features.modules():  # "he" initialisation, as torchvision's VGG
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    request.load_pretrained(net)
    if request.variant == "acol":
        return VGGACoLTrunk(net.features, request.large_feature_map)
    if request.variant == "spg":
        return VGGSPGTrunk(net.features, request.large_feature_map)
    return VGGTrunk(net.features, request.large_feature_map, request.adl)


def official_vgg16_name(name: str, adl: bool, large_feature_map: bool) -> str | None:
    """The trunk name of an official file's VGG16 weight ``name`` (its ``features`` index at torchvision's); None
    where the trunk has no such convolution."""
    match = _FEATURE.match(name)
    if not match:
        return name
    file_convs = VGG_FILE_CONVS[(adl, large_feature_map)]
    index = int(match.group(1))
    if index not in file_convs:
        return None
    return f"features.{VGG_CONVS[file_convs.index(index)]}.{match.group(2)}"


def official_vgg16_hint(names: Collection[str], adl: bool, large_feature_map: bool) -> str:
    """Where an official VGG16 file's ``features`` indices are another setting's: which ('' if none)."""
    for file_adl, file_large in VGG_FILE_CONVS:
        if (file_adl, file_large) == (adl, large_feature_map):
            continue
        conv4_1, conv5_1 = VGG_FILE_CONVS[(file_adl, file_large)][7], VGG_FILE_CONVS[(file_adl, file_large)][10]
        if f"features.{conv4_1}.weight" in names and f"features.{conv5_1}.weight" in names:
            return (
                f"; its features indices are those of a VGG16 {'with' if file_adl else 'without'} ADL and "
                f"large_feature_map {str(file_large).lower()}: check the cell's wsol method and "
                "model.large_feature_map"
            )
    return ""
