"""The backbone records: each backbone of params.yaml with every fact about it, torch-free.

A backbone is named once, as a key of ``BACKBONES``: the schema's ``backbones`` enum, the report's
label, the post-hoc default target layer, the importer's formats and the trunk builder all come
from its record. The trunk itself lives in its family's module under ``dawsol.models`` (``resnet``,
``vgg``, ``inception``, ``efficientnet_lite``); ``dawsol.models.registry`` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

# (mean, std) per RGB channel of pixels in [0, 1]: normalisation belongs to the backbone, so the datasets take it
# from its record (``dawsol.models.registry.normalization``)
Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]
IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# the official checkpoint formats ``dawsol import-checkpoint`` reads (dawsol.checkpoints.importer)
DA_WSOL = "da-wsol"
WSOLEVALUATION = "wsolevaluation"


@dataclass(frozen=True)
class BackboneRecord:
    """One backbone: its name and label, how its trunk is built and initialised, where its ImageNet weights come from,
    its input normalisation, post-hoc default and the official checkpoints that hold it."""

    name: str
    title: str  # the report's label
    builder: str  # lazy reference to its ``dawsol.models.trunk.TrunkBuilder``
    dropped_heads: tuple[str, ...]  # key prefixes of the ImageNet network that the trunk drops
    # the gradient methods' default target layer (docs/posthoc.md section 3): a module path in the CAM trunk
    target_layer: str
    torchvision_weights: str | None = None  # torchvision's weights enum (IMAGENET1K_V1), e.g. ``ResNet50_Weights``
    imagenet_loader: str | None = None  # or a lazy reference to a loader of its ImageNet state dict
    normalization: Normalization = IMAGENET_NORMALIZATION
    width_multiplier: bool = False  # whether model.width may differ from 1.0 (from-scratch CPU backbones)
    # where the ImageNet network is a CAM model (one linear head on pooled features): that head's key prefix and a
    # lazy reference to the builder of the unmodified trunk it was trained on (``dawsol localize --imagenet``)
    imagenet_head: str | None = None
    classifier_trunk: str | None = None
    official_formats: tuple[str, ...] = ()  # the official checkpoint formats that hold this backbone


BACKBONES: dict[str, BackboneRecord] = {
    record.name: record
    for record in (
        BackboneRecord(
            "resnet18",
            "ResNet18",
            "dawsol.models.resnet:resnet18_trunk",
            ("fc.",),
            target_layer="layer3",
            torchvision_weights="ResNet18_Weights",
            width_multiplier=True,
        ),
        BackboneRecord(
            "resnet50",
            "ResNet50",
            "dawsol.models.resnet:resnet50_trunk",
            ("fc.",),
            target_layer="layer3",  # the official extractors' default
            torchvision_weights="ResNet50_Weights",
            official_formats=(DA_WSOL, WSOLEVALUATION),
        ),
        BackboneRecord(
            "inception_v3",
            "InceptionV3",
            "dawsol.models.inception:inception_v3_trunk",
            ("fc.", "AuxLogits.", "Mixed_7"),
            target_layer="SPG_A3_1b",
            torchvision_weights="Inception_V3_Weights",
            official_formats=(DA_WSOL, WSOLEVALUATION),
        ),
        BackboneRecord(
            "vgg16",
            "VGG16",
            "dawsol.models.vgg:vgg16_trunk",
            ("classifier.",),
            target_layer="features",
            torchvision_weights="VGG16_Weights",
            official_formats=(WSOLEVALUATION,),
        ),
        BackboneRecord(
            "efficientnet_lite0",
            "EfficientNet-Lite0",
            "dawsol.models.efficientnet_lite:build_efficientnet_lite0",
            ("_fc.",),
            target_layer="_blocks",
            imagenet_loader="dawsol.models.efficientnet_lite:imagenet_lite0_state_dict",
            normalization=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # pixels in [0, 1] mapped to [-1, 1]
            imagenet_head="_fc",
            classifier_trunk="dawsol.models.efficientnet_lite:lite0_classifier_trunk",
        ),
    )
}
