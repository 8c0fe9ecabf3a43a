"""The heads of ACoL and SPG, the two WSOL methods with their own layers and losses (docs/wsol-methods.md).

A head sits between the trunk and the score estimator ``e`` (``WSOLModel.classifier``): it gives the
pixel features ``e`` is applied to (so DA-WSOL's assigner clusters them and the alignment serves
``e``), computes the method's auxiliary outputs in training, adds its loss terms to ``L_c``, and
may define the CAM (ACoL). Auxiliary outputs are computed only when the GT labels are passed
(training): ACoL erases and SPG builds its masks at the GT class, as the official code does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dawsol.errors import DawsolError

# SPG's foreground needs this many pixels above its threshold, else it takes those above 0.7 x the map's maximum
SPG_MIN_FOREGROUND = 30
SPG_FALLBACK_RATIO = 0.7
SPG_IGNORE = 255.0


class TrunkFacts(NamedTuple):
    """What a head needs to know of its trunk."""

    feature_dim: int
    num_classes: int
    acol_init: str  # "xavier" or "he"
    tap_channels: tuple[int, int] | None  # SPG's two tap widths; None where the trunk defines no taps


def minmax(maps: Tensor) -> Tensor:
    """Each map of ``[B, h, w]`` min-max normalised to [0, 1]; a constant map gives NaN, as in the official code."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    return (maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low)


def _at(maps: Tensor, labels: Tensor) -> Tensor:
    """Channel ``labels[b]`` of image b of ``[B, C, h, w]``: ``[B, h, w]``."""
    return maps[torch.arange(len(labels), device=maps.device), labels]


def _conv_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(inplace=False)]


def _initialise(module: nn.Module, mode: str) -> None:
    """Every convolution of ``module``: xavier-uniform or "he" (Kaiming normal, fan out) weights, zero bias."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            if mode == "he":
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)


class Head(nn.Module):
    """The interface of a method head; ``WSOLModel`` calls these."""

    feature_dim: int
    reads_taps: bool = False
    classifier_init: str = "xavier"  # how the score estimator is initialised ("he": ACoL on ResNet)
    lr_ratio: float | None = None  # the head's rate over ``train.lr`` (None: ``lr_classifier_ratio``, the official)

    def features(self, trunk_out: Tensor) -> Tensor:
        """The pixel features the score estimator is applied to."""
        return trunk_out

    def auxiliary(
        self, trunk_out: Tensor, taps: list[Tensor], features: Tensor, classifier: nn.Conv2d, labels: Tensor
    ) -> dict[str, Tensor]:
        """The method's training outputs for GT ``labels``."""
        raise NotImplementedError

    def loss(self, aux: Mapping[str, Tensor], labels: Tensor, input_size: tuple[int, int]) -> Tensor:
        """The method's terms added to the cross-entropy of the logits (0-dim)."""
        raise NotImplementedError

    def cams(self, trunk_out: Tensor, features: Tensor, classifier: nn.Conv2d, labels: Tensor) -> Tensor | None:
        """The method's CAM ``[B, h, w]`` at ``labels``, or None where it is the estimator's class map."""
        return None


def acol_keep(maps: Tensor, threshold: float) -> Tensor:
    """Where ACoL keeps the trunk features: the detached ``[B, h, w]`` maps, min-max normalised in float32 (also
    under bf16 autocast, so training erases as evaluation does), below ``threshold``; a NaN (constant map) keeps."""
    return ~(minmax(maps.detach().float()) >= threshold)


class ACoLHead(Head):
    """ACoL (Zhang et al., CVPR 2018): two heads, B trained on the features A's attention erased.

    Head A is ``body_a`` (3x3 conv + ReLU, 3x3 conv + ReLU) and the model's score estimator, so its
    class maps are the estimator on ``body_a``'s pixel features and the logits their average. The
    attention is A's map at the GT class, min-max normalised; trunk positions where it is at least
    ``threshold`` are zeroed (all channels) and head B (``body_b`` + ``classifier_b``) runs on them.
    Loss: CE(A) + CE(B). CAM: the maximum of A's and B's normalised maps at the class.
    """

    def __init__(self, facts: TrunkFacts, threshold: float, channels: int) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise DawsolError(f"wsol.acol.threshold is {threshold}; it must lie in [0, 1]")
        self.threshold = threshold
        self.feature_dim = channels
        self.classifier_init = facts.acol_init
        self.body_a = nn.Sequential(*_conv_relu(facts.feature_dim, channels), *_conv_relu(channels, channels))
        self.body_b = nn.Sequential(*_conv_relu(facts.feature_dim, channels), *_conv_relu(channels, channels))
        self.classifier_b = nn.Conv2d(channels, facts.num_classes, kernel_size=1)
        _initialise(self, facts.acol_init)

    def features(self, trunk_out: Tensor) -> Tensor:
        return self.body_a(trunk_out)

    def _maps_b(self, trunk_out: Tensor, maps_a_at_label: Tensor) -> Tensor:
        keep = acol_keep(maps_a_at_label, self.threshold)
        return self.classifier_b(self.body_b(trunk_out * keep[:, None].to(trunk_out.dtype)))

    def auxiliary(
        self, trunk_out: Tensor, taps: list[Tensor], features: Tensor, classifier: nn.Conv2d, labels: Tensor
    ) -> dict[str, Tensor]:
        maps_b = self._maps_b(trunk_out, _at(classifier(features), labels))
        return {"logits_b": maps_b.mean(dim=(2, 3))}

    def loss(self, aux: Mapping[str, Tensor], labels: Tensor, input_size: tuple[int, int]) -> Tensor:
        return F.cross_entropy(aux["logits_b"].float(), labels)

    def cams(self, trunk_out: Tensor, features: Tensor, classifier: nn.Conv2d, labels: Tensor) -> Tensor:
        map_a = _at(classifier(features), labels)
        map_b = _at(self._maps_b(trunk_out, map_a), labels)
        return torch.maximum(minmax(map_a), minmax(map_b))


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, 1, h, w]`` bilinearly to ``size`` (half-pixel centres): ``[B, H, W]``."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]


def spg_mask(attention: Tensor, high: float, low: float) -> Tensor:
    """SPG's pseudo-mask of ``[B, H, W]`` maps: 1 above ``high`` (or above 0.7 x the maximum where fewer than 30
    pixels are), then 0 below ``low``, 255 (ignored) elsewhere."""
    foreground = attention > high
    few = foreground.sum(dim=(1, 2), keepdim=True) < SPG_MIN_FOREGROUND
    fallback = attention > SPG_FALLBACK_RATIO * attention.amax(dim=(1, 2), keepdim=True)
    foreground = torch.where(few, fallback, foreground)
    mask = torch.full_like(attention, SPG_IGNORE)
    mask[foreground] = 1.0
    mask[attention < low] = 0.0
    return mask


def masked_bce(logits: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy with logits over the pixels ``mask`` does not ignore; 0 where it ignores all."""
    kept = mask != SPG_IGNORE
    if not bool(kept.any()):
        return logits.new_zeros(())
    return F.binary_cross_entropy_with_logits(logits[kept], mask[kept])


class SPGHead(Head):
    """SPG (Zhang et al., ECCV 2018): self-produced guidance from side branches at two trunk depths.

    ``SPG_B_1a`` and ``SPG_B_2a`` (3x3 conv + ReLU) read the trunk's two taps and share
    ``SPG_B_shared`` (3x3 conv + ReLU, 1x1 conv to one channel): logits ``b1`` and ``b2``. ``SPG_C``
    (3x3 conv + ReLU, 1x1 conv) reads the pixel features: logits ``c``. All are upsampled to the
    input size for the three BCE terms against pseudo-masks (``spg_mask``): ``b2`` against the
    normalised class map at the GT class (h1, l1), ``b1`` against sigmoid(``b2``) (h2, l2), ``c``
    against the mean of sigmoid(``b1``) and sigmoid(``b2``) (h3, l3). The CAM is the raw class map.
    """

    reads_taps = True

    def __init__(
        self, facts: TrunkFacts, thresholds: tuple[tuple[float, float], ...], branch_channels: int, c_channels: int
    ) -> None:
        super().__init__()
        if facts.tap_channels is None:
            raise DawsolError("wsol spg: this backbone's trunk names no places for SPG's side branches")
        if len(thresholds) != 3 or any(len(pair) != 2 or pair[1] > pair[0] for pair in thresholds):
            raise DawsolError(f"wsol.spg.thresholds is {thresholds}; give three [high, low] pairs with low <= high")
        self.thresholds = tuple((float(high), float(low)) for high, low in thresholds)
        self.feature_dim = facts.feature_dim
        shallow, deep = facts.tap_channels
        self.SPG_B_1a = nn.Sequential(*_conv_relu(shallow, branch_channels))
        self.SPG_B_2a = nn.Sequential(*_conv_relu(deep, branch_channels))
        self.SPG_B_shared = nn.Sequential(
            *_conv_relu(branch_channels, branch_channels), nn.Conv2d(branch_channels, 1, kernel_size=1)
        )
        self.SPG_C = nn.Sequential(*_conv_relu(facts.feature_dim, c_channels), nn.Conv2d(c_channels, 1, kernel_size=1))
        _initialise(self, "xavier")

    def auxiliary(
        self, trunk_out: Tensor, taps: list[Tensor], features: Tensor, classifier: nn.Conv2d, labels: Tensor
    ) -> dict[str, Tensor]:
        shallow, deep = taps
        return {
            "logits_b1": self.SPG_B_shared(self.SPG_B_1a(shallow)),
            "logits_b2": self.SPG_B_shared(self.SPG_B_2a(deep)),
            "logits_c": self.SPG_C(features),
            "class_map": _at(classifier(features), labels),
        }

    def loss(self, aux: Mapping[str, Tensor], labels: Tensor, input_size: tuple[int, int]) -> Tensor:
        (h1, l1), (h2, l2), (h3, l3) = self.thresholds
        b1 = _upsample(aux["logits_b1"].float(), input_size)
        b2 = _upsample(aux["logits_b2"].float(), input_size)
        c = _upsample(aux["logits_c"].float(), input_size)
        attention = minmax(_upsample(aux["class_map"].detach().float()[:, None], input_size))
        b2_sigmoid = torch.sigmoid(b2.detach())
        fused = (torch.sigmoid(b1.detach()) + b2_sigmoid) / 2
        return (
            masked_bce(b2, spg_mask(attention, h1, l1))
            + masked_bce(b1, spg_mask(b2_sigmoid, h2, l2))
            + masked_bce(c, spg_mask(fused, h3, l3))
        )


def _with_lr_ratio(head: Head, options: Mapping[str, Any]) -> Head:
    ratio = options.get("head_lr_ratio")
    head.lr_ratio = None if ratio is None else float(ratio)
    return head


def acol_head(options: Mapping[str, Any], facts: TrunkFacts) -> Head:
    """ACoL's head from ``wsol.acol`` (threshold, head_channels, head_lr_ratio)."""
    return _with_lr_ratio(ACoLHead(facts, float(options["threshold"]), int(options["head_channels"])), options)


def spg_head(options: Mapping[str, Any], facts: TrunkFacts) -> Head:
    """SPG's head from ``wsol.spg`` (thresholds, branch_channels, c_channels, head_lr_ratio)."""
    thresholds = tuple(tuple(pair) for pair in options["thresholds"])
    head = SPGHead(facts, thresholds, int(options["branch_channels"]), int(options["c_channels"]))
    return _with_lr_ratio(head, options)
