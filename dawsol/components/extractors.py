"""The post-hoc extractor records: each localization map of ``eval.cam_methods`` with every fact about it, torch-free.

An extractor maps a trained model's images to raw maps ``[B, h, w]`` (``dawsol.evaluation.posthoc``,
docs/posthoc.md): the model's own CAM, a gradient method at a target layer (``eval.target_layer``), or one of
pytorch-grad-cam's methods run through the protocol's chain (``library``; docs/posthoc.md section 8).
dawsol's own are declared on their function in a module of ``dawsol.evaluation``::

    @register_extractor("xgradcam", "XGrad-CAM")
    def xgradcam(model, images, labels, layer=None): ...

and read from the source (``dawsol.components.declared``); pytorch-grad-cam's are a line each below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dawsol.components import check_declared, check_name, declared, unique

Function = TypeVar("Function")
EXTRACTOR_NAME = r"[a-z][a-z0-9_-]*"  # part of MLflow metric names (``<method>.<split>...``) and file names


@dataclass(frozen=True)
class LibraryMethod:
    """One pytorch-grad-cam method: its class and what it runs (``dawsol.evaluation.gradcam_library``)."""

    class_name: str  # in ``pytorch_grad_cam``
    gradients: bool  # a backward pass (else: forward passes only, under no_grad)
    per_channel: bool = False  # a forward pass per target-layer channel, batched by ``eval.channel_batch_size``
    all_bias_layers: bool = False  # FullGrad: every Conv2d / BatchNorm2d with a bias instead of the target layer


@dataclass(frozen=True)
class ExtractorRecord:
    """One extractor: its report label, a lazy reference to its function and whether it is a gradient method
    (a map at the target layer, upsampled and min-max normalised per image) or the model's CAM (the cell's chain)."""

    name: str
    title: str  # the report's label
    function: str  # ``(model, images, labels, layer) -> [B, h, w]``, ``dawsol.evaluation.posthoc.Extractor``
    gradient: bool = True
    library: LibraryMethod | None = None  # pytorch-grad-cam's method, for ``function`` = the library adapter

    def __post_init__(self) -> None:
        check_name("extractor", self.name, EXTRACTOR_NAME)


def register_extractor(name: str, title: str, *, gradient: bool = True) -> Callable[[Function], Function]:
    """Declares the decorated ``(model, images, labels, layer) -> [B, h, w]`` function as extractor ``name`` with
    report label ``title``; ``gradient=False`` for a map on the model's own CAM chain."""
    return check_declared("extractor", name, EXTRACTORS, "function")


def _library(name: str, title: str, method: LibraryMethod) -> ExtractorRecord:
    return ExtractorRecord(name, title, "dawsol.evaluation.posthoc:library_method", library=method)


EXTRACTORS: dict[str, ExtractorRecord] = unique(
    "extractor",
    (
        *(
            found.record(ExtractorRecord, at="function")
            for found in declared("dawsol.evaluation", "register_extractor")
        ),
        # pytorch-grad-cam's, under names of their own (its GradCAM and GradCAM++ labelled apart from dawsol's)
        _library("lib-gradcam", "GradCAM (pytorch-grad-cam)", LibraryMethod("GradCAM", gradients=True)),
        _library("lib-gradcampp", "GradCAM++ (pytorch-grad-cam)", LibraryMethod("GradCAMPlusPlus", gradients=True)),
        _library("hirescam", "HiResCAM", LibraryMethod("HiResCAM", gradients=True)),
        _library("gradcam-elementwise", "GradCAM element-wise", LibraryMethod("GradCAMElementWise", gradients=True)),
        _library("xgradcam", "XGradCAM", LibraryMethod("XGradCAM", gradients=True)),
        _library("layercam", "LayerCAM", LibraryMethod("LayerCAM", gradients=True)),
        _library("eigengradcam", "EigenGradCAM", LibraryMethod("EigenGradCAM", gradients=True)),
        _library("shapleycam", "ShapleyCAM", LibraryMethod("ShapleyCAM", gradients=True)),
        _library("finercam", "FinerCAM", LibraryMethod("FinerCAM", gradients=True)),
        _library("fullgrad", "FullGrad", LibraryMethod("FullGrad", gradients=True, all_bias_layers=True)),
        _library("eigencam", "EigenCAM", LibraryMethod("EigenCAM", gradients=False)),
        _library("kpcacam", "KPCA-CAM", LibraryMethod("KPCA_CAM", gradients=False)),
        _library("scorecam", "ScoreCAM", LibraryMethod("ScoreCAM", gradients=False, per_channel=True)),
        _library("ablationcam", "AblationCAM", LibraryMethod("AblationCAM", gradients=False, per_channel=True)),
    ),
    "function",
)
# dawsol's own extractors, and pytorch-grad-cam's by name
OWN_EXTRACTORS = [name for name, record in EXTRACTORS.items() if record.library is None]
LIBRARY_METHODS: dict[str, LibraryMethod] = {
    name: record.library for name, record in EXTRACTORS.items() if record.library is not None
}
