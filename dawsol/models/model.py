"""The WSOL model: a feature trunk and the score estimator, with the official learning-rate groups."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from dawsol.config import ModelSettings, TrainSettings, WSOLSettings
from dawsol.errors import DawsolError
from dawsol.models.backbones import Trunk
from dawsol.models.registry import backbone, build_trunk
from dawsol.wsol.methods import trunk_layer


class ModelOutput(NamedTuple):
    """One forward pass: class scores, pixel features and their global average."""

    logits: Tensor  # [B, K]
    features: Tensor  # [B, D, h, w]
    pooled: Tensor  # [B, D]


class WSOLModel(nn.Module):
    """Trunk ``f``, global average pooling ``g`` and the score estimator ``e``.

    ``e`` is a 1x1 convolution with bias (xavier-initialised, bias 0), applied to the pooled
    feature for the logits and to every pixel feature for the CAM.
    """

    def __init__(self, trunk: Trunk, num_classes: int, backbone: str) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.trunk = trunk
        self.feature_dim = trunk.feature_dim
        self.classifier = nn.Conv2d(self.feature_dim, num_classes, kernel_size=1, bias=True)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, images: Tensor) -> ModelOutput:
        features = self.trunk(images)
        pooled = features.mean(dim=(2, 3))
        logits = self.classifier(pooled[:, :, None, None]).flatten(1)
        return ModelOutput(logits=logits, features=features, pooled=pooled)

    def cams(self, features: Tensor, labels: Tensor) -> Tensor:
        """The estimator on every pixel feature, channel ``labels[b]`` of image b: ``[B, h, w]``."""
        weight = self.classifier.weight.flatten(1)[labels].to(features.dtype)  # [B, D]
        bias = self.classifier.bias[labels].to(features.dtype)
        return torch.einsum("bd,bdhw->bhw", weight, features) + bias[:, None, None]

    def param_groups(self, train: TrainSettings) -> list[dict]:
        """The official learning-rate groups (docs/method.md 3.3).

        ``backbone``: pretrained trunk layers at ``lr`` (all of ResNet's, layer4 included);
        ``new_layers``: layers added to the pretrained trunk (VGG conv6, Inception SPG_A3_*) and
        ``classifier``: the estimator, both at ``lr * lr_classifier_ratio``. Every group carries
        ``name`` and ``decay`` (True: the step schedule applies). Frozen trunk stages are in none.
        """
        new = {name: p for name, p in self.trunk.new_layer_parameters() if p.requires_grad}
        pretrained = [p for name, p in self.trunk.named_parameters() if name not in new and p.requires_grad]
        high_lr = train.lr * train.lr_classifier_ratio
        groups = [
            {"name": "backbone", "params": pretrained, "lr": train.lr, "decay": True},
            {"name": "new_layers", "params": list(new.values()), "lr": high_lr, "decay": True},
            {"name": "classifier", "params": list(self.classifier.parameters()), "lr": high_lr, "decay": True},
        ]
        return [group for group in groups if group["params"]]


def build_model(model: ModelSettings, num_classes: int, wsol: WSOLSettings) -> WSOLModel:
    """The WSOL model for ``model.backbone``, with the layer ``wsol.method`` adds to the trunk (ADL)."""
    if model.width != 1.0 and not backbone(model.backbone).width_multiplier:
        raise DawsolError(
            f"model.width is {model.width} for {model.backbone}: only resnet18 takes a width multiplier "
            "(set model.width: 1.0 for this backbone in params.yaml)"
        )
    if model.width != 1.0 and model.pretrained == "imagenet":
        raise DawsolError(
            f"model.width is {model.width} with pretrained: imagenet: ImageNet weights exist only for "
            "width 1.0 (set model.pretrained: none or model.width: 1.0)"
        )
    trunk = build_trunk(model.backbone, model.pretrained, model.large_feature_map, model.width, trunk_layer(wsol))
    trunk.freeze(model.frozen_stages)
    return WSOLModel(trunk, num_classes, model.backbone)
