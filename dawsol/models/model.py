"""The WSOL model: a feature trunk and the score estimator, with the official learning-rate groups."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from types import MappingProxyType
from typing import NamedTuple

import torch
from torch import Tensor, nn

from dawsol.components.backbones import BACKBONES
from dawsol.config import ModelSettings, TrainSettings, WSOLSettings
from dawsol.errors import DawsolError
from dawsol.models.registry import backbone, build_trunk
from dawsol.models.trunk import Tap, Trunk
from dawsol.wsol import Head, TrunkFacts, method_head, trunk_layer, trunk_variant

_NO_AUX: Mapping[str, Tensor] = MappingProxyType({})


class ModelOutput(NamedTuple):
    """One forward pass: class scores, pixel features and their global average; the trunk's output and a
    method head's training outputs (``aux``, empty without GT labels or a head)."""

    logits: Tensor  # [B, K]
    features: Tensor  # [B, D, h, w]
    pooled: Tensor  # [B, D]
    trunk_out: Tensor | None = None  # [B, D_trunk, h, w]; the features themselves where there is no head
    aux: Mapping[str, Tensor] = _NO_AUX

    def expand(self, count: int) -> ModelOutput:
        """A one-image evaluation pass as ``count`` copies, e.g. to take its CAMs at ``count`` classes."""
        trunk_out = None if self.trunk_out is None else self.trunk_out.expand(count, -1, -1, -1)
        return ModelOutput(
            self.logits.expand(count, -1),
            self.features.expand(count, -1, -1, -1),
            self.pooled.expand(count, -1),
            trunk_out,
        )


class WSOLModel(nn.Module):
    """Trunk ``f``, an optional method head (ACoL, SPG), global average pooling ``g`` and the score estimator ``e``.

    ``e`` is a 1x1 convolution with bias (xavier-initialised, bias 0; "he" under ACoL's ResNet head),
    applied to the pooled feature for the logits and to every pixel feature for the CAM. The
    pixel features are the trunk's, or the head's (ACoL's head A) where it has its own.
    """

    def __init__(self, trunk: Trunk, num_classes: int, backbone: str, head: Head | None = None) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.trunk = trunk
        self.head = head
        self.taps: tuple[Tap, ...] = (trunk.spg_taps() or ()) if head is not None and head.reads_taps else ()
        self.feature_dim = head.feature_dim if head is not None else trunk.feature_dim
        self.classifier = nn.Conv2d(self.feature_dim, num_classes, kernel_size=1, bias=True)
        if head is not None and head.classifier_init == "he":
            nn.init.kaiming_normal_(self.classifier.weight, mode="fan_out", nonlinearity="relu")
        else:
            nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    @contextmanager
    def _tapped(self) -> Iterator[list[Tensor]]:
        """The outputs (or inputs) of the trunk's taps, filled by one forward pass of the trunk."""
        taken: list[Tensor] = []
        modules = dict(self.trunk.named_modules())
        with ExitStack() as hooks:
            for tap in self.taps:
                if tap.at_input:
                    hook = modules[tap.path].register_forward_pre_hook(lambda _m, args: taken.append(args[0]))
                else:
                    hook = modules[tap.path].register_forward_hook(lambda _m, _a, out: taken.append(out))
                hooks.callback(hook.remove)
            yield taken

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ModelOutput:
        """``labels``: the GT labels in training, which a method head needs for its outputs (``aux``)."""
        with self._tapped() as taps:
            trunk_out = self.trunk(images)
        features = trunk_out if self.head is None else self.head.features(trunk_out)
        pooled = features.mean(dim=(2, 3))
        logits = self.classifier(pooled[:, :, None, None]).flatten(1)
        aux = _NO_AUX
        if self.head is not None and labels is not None:
            aux = self.head.auxiliary(trunk_out, taps, features, self.classifier, labels)
        return ModelOutput(logits=logits, features=features, pooled=pooled, trunk_out=trunk_out, aux=aux)

    def cams(self, features: Tensor, labels: Tensor) -> Tensor:
        """The estimator on every pixel feature, channel ``labels[b]`` of image b: ``[B, h, w]``."""
        weight = self.classifier.weight.flatten(1)[labels].to(features.dtype)  # [B, D]
        bias = self.classifier.bias[labels].to(features.dtype)
        return torch.einsum("bd,bdhw->bhw", weight, features) + bias[:, None, None]

    def wsol_cams(self, out: ModelOutput, labels: Tensor) -> Tensor:
        """The WSOL method's CAM of a forward pass at ``labels``, ``[B, h, w]`` in float32: the estimator's class
        map (``cams``), or the head's own (ACoL: the larger of its two normalised maps)."""
        features = out.features.float()
        if self.head is not None and out.trunk_out is not None:
            with torch.autocast(features.device.type, enabled=False):
                own = self.head.cams(out.trunk_out.float(), features, self.classifier, labels)
            if own is not None:
                return own
        return self.cams(features, labels)

    def method_loss(self, out: ModelOutput, labels: Tensor, input_size: tuple[int, int]) -> Tensor | None:
        """The head's loss terms for a training forward pass (``out`` of ``forward(images, labels)``), or None."""
        if self.head is None:
            return None
        return self.head.loss(out.aux, labels, input_size)

    def param_groups(self, train: TrainSettings) -> list[dict]:
        """The official learning-rate groups (docs/method.md 3.3).

        ``backbone``: pretrained trunk layers at ``lr`` (all of ResNet's, layer4 included);
        ``new_layers``: layers added to the pretrained trunk (VGG conv6, Inception SPG_A3_*, VGG-SPG's
        SPG_A_*), ``head``: a method head's layers (ACoL, SPG; its ``head_lr_ratio`` where set), and
        ``classifier``: the estimator, all at ``lr * lr_classifier_ratio``. Every group carries ``name``
        and ``decay`` (True: the step schedule applies). Frozen trunk stages are in none.
        """
        new = {name: p for name, p in self.trunk.new_layer_parameters() if p.requires_grad}
        pretrained = [p for name, p in self.trunk.named_parameters() if name not in new and p.requires_grad]
        high_lr = train.lr * train.lr_classifier_ratio
        groups = [
            {"name": "backbone", "params": pretrained, "lr": train.lr, "decay": True},
            {"name": "new_layers", "params": list(new.values()), "lr": high_lr, "decay": True},
            {
                "name": "head",
                "params": [] if self.head is None else list(self.head.parameters()),
                "lr": high_lr if self.head is None or self.head.lr_ratio is None else train.lr * self.head.lr_ratio,
                "decay": True,
            },
            {"name": "classifier", "params": list(self.classifier.parameters()), "lr": high_lr, "decay": True},
        ]
        return [group for group in groups if group["params"]]


def build_model(model: ModelSettings, num_classes: int, wsol: WSOLSettings) -> WSOLModel:
    """The WSOL model for ``model.backbone``: the trunk variant of ``wsol.method``, with the layer it adds to the trunk
    (ADL) and its head (ACoL, SPG)."""
    if model.width != 1.0 and not backbone(model.backbone).width_multiplier:
        scalable = ", ".join(name for name, record in BACKBONES.items() if record.width_multiplier)
        raise DawsolError(
            f"model.width is {model.width} for {model.backbone}: only {scalable} take(s) a width multiplier "
            "(set model.width: 1.0 for this backbone in params.yaml)"
        )
    if model.width != 1.0 and model.pretrained == "imagenet":
        raise DawsolError(
            f"model.width is {model.width} with pretrained: imagenet: ImageNet weights exist only for "
            "width 1.0 (set model.pretrained: none or model.width: 1.0)"
        )
    trunk = build_trunk(
        model.backbone, model.pretrained, model.large_feature_map, model.width, trunk_layer(wsol), trunk_variant(wsol)
    )
    trunk.freeze(model.frozen_stages)
    taps = trunk.spg_taps()
    facts = TrunkFacts(
        trunk.feature_dim,
        num_classes,
        trunk.acol_head_init,
        None if taps is None else (taps[0].channels, taps[1].channels),
    )
    return WSOLModel(trunk, num_classes, model.backbone, method_head(wsol, facts))
