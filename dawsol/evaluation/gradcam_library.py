"""pytorch-grad-cam's CAM methods as dawsol extractors, under the protocol's map chain (docs/posthoc.md section 8).

Each method runs as the library computes it, on a ``WSOLModel`` whose forward is wrapped to return the
logits, with the ground-truth class as target (the library's ``ClassifierOutputTarget``, FinerCAM's
``FinerWeightedTarget``). What comes back is the library's map **before** its ReLU, min-max and
resize, taken from its ``get_cam_image`` hook (FullGrad: its channel sum before the last scaling),
rectified here at the target layer's resolution; ``dawsol.evaluation.posthoc.score_maps`` then
applies the protocol's chain, as for dawsol's own gradient methods.

The library is imported on the first call, not with this module: it pulls in scikit-learn, SciPy
and matplotlib, seconds that every other ``dawsol`` command would pay.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import cache
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dawsol.components.extractors import LIBRARY_METHODS, LibraryMethod
from dawsol.errors import DawsolError

# ScoreCAM's and AblationCAM's forward passes per batch (one per channel of the target layer): at 32, ResNet50
# at 224 px takes under 2 GB in no-grad forwards (docs/posthoc.md section 8.3)
CHANNEL_BATCH_SIZE = 32
FINERCAM_COMPARISONS = 3  # the library's default: the classes ranked 1..3 nearest to the target's logit
FINERCAM_ALPHA = 1.0  # the library's default comparison strength


class _Logits(nn.Module):
    """The model as the library expects it: images in, class scores ``[B, K]`` out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).logits.float()


class _KeepsLayerMaps:
    """Mixed in before a library class: keeps each map ``get_cam_image`` returns, before the ReLU, min-max
    and resize the library's ``compute_cam_per_layer`` applies to it."""

    raw_maps: list[np.ndarray]

    def get_cam_image(self, *args: Any, **kwargs: Any) -> np.ndarray:
        cam = super().get_cam_image(*args, **kwargs)  # type: ignore[misc]
        self.raw_maps.append(np.asarray(cam, dtype=np.float32))
        return cam


class _KeepsFullGradSum:
    """Mixed in before FullGrad: keeps its sum over bias layers before the last min-max. The per-channel min-max
    and resize to the input size before that sum are FullGrad's own aggregation and stay the library's."""

    raw_maps: list[np.ndarray]

    def aggregate_multi_layers(self, cams: np.ndarray) -> np.ndarray:
        self.raw_maps.append(np.asarray(cams, dtype=np.float32).sum(axis=1))
        return super().aggregate_multi_layers(cams)  # type: ignore[misc]


@cache
def _keeping_raw(base: type) -> type:
    """``base`` (a library CAM class) with the mixin that keeps its raw maps."""
    mixin = _KeepsFullGradSum if base.__name__ == "FullGrad" else _KeepsLayerMaps
    return type(f"Raw{base.__name__}", (mixin, base), {})


def _quiet_progress(library: types.ModuleType) -> ExitStack:
    """ScoreCAM and AblationCAM draw a tqdm bar per image; within the stack their modules see a silent one."""
    silent = types.SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)
    stack = ExitStack()
    for module in (library.score_cam, library.ablation_cam):
        stack.enter_context(mock.patch.object(module, "tqdm", silent))
    return stack


@contextmanager
def _calls_counted(modules: dict[str, nn.Module]) -> Iterator[dict[str, int]]:
    """How often each module runs within the block (forward hooks, removed afterwards)."""
    counts = dict.fromkeys(modules, 0)
    with ExitStack() as hooks:
        for path, module in modules.items():

            def count(_module: nn.Module, _args: tuple, _output: Any, path: str = path) -> None:
                counts[path] += 1

            hooks.callback(module.register_forward_hook(count).remove)
        yield counts


def _bias_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers FullGrad reads: the library's rule, Conv2d or BatchNorm2d (exact types) with a bias."""
    return {
        path: module
        for path, module in model.named_modules()
        if type(module) in (nn.Conv2d, nn.BatchNorm2d) and module.bias is not None
    }


def _finer_targets(library: types.ModuleType, logits: Tensor, labels: Tensor) -> list[Any]:
    """FinerCAM's targets at the GT class: compared with the classes whose logits lie nearest to the GT's
    (the library's rule, which otherwise starts from the top-1 class)."""
    distance = (logits - logits.gather(1, labels[:, None])).abs()
    distance.scatter_(1, labels[:, None], -1.0)  # the GT first, also against a tie
    order = distance.argsort(dim=1)[:, 1 : 1 + FINERCAM_COMPARISONS].tolist()
    return [
        library.utils.model_targets.FinerWeightedTarget(int(label), others, FINERCAM_ALPHA)
        for label, others in zip(labels.tolist(), order, strict=True)
    ]


def _run(
    library: types.ModuleType,
    name: str,
    wrapper: _Logits,
    images: Tensor,
    labels: Tensor,
    layer: nn.Module,
    channel_batch_size: int,
) -> np.ndarray:
    """One library call on ``images``: the raw maps ``[B, h, w]`` it kept."""
    spec = LIBRARY_METHODS[name]
    base = getattr(library, spec.class_name)
    targets: list[Callable[[Tensor], Tensor]]
    if name == "finercam":
        with torch.no_grad():
            targets = _finer_targets(library, wrapper(images), labels)
        cam = base(wrapper, [layer], base_method=_keeping_raw(library.GradCAM))
        kept = cam.base_cam
    else:
        targets = [library.utils.model_targets.ClassifierOutputTarget(int(c)) for c in labels.tolist()]
        options: dict[str, Any] = {}
        if name == "ablationcam":  # a fresh ablation layer: the library's default instance is shared
            options = {"ablation_layer": library.AblationLayer(), "batch_size": channel_batch_size}
        cam = kept = _keeping_raw(base)(wrapper, [] if spec.all_bias_layers else [layer], **options)
        if name == "scorecam":
            cam.batch_size = channel_batch_size
    kept.raw_maps = []
    try:
        cam(images, targets)
    finally:
        kept.activations_and_grads.release()
        if name == "ablationcam":  # the library swaps the target layer back only when nothing failed
            library.utils.find_layers.replace_layer_recursive(wrapper, options["ablation_layer"], layer)
    (raw,) = kept.raw_maps
    return raw


def library_maps(
    name: str,
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    layer: nn.Module,
    layer_path: str,
    *,
    channel_batch_size: int = CHANNEL_BATCH_SIZE,
) -> Tensor:
    """The library method ``name``'s rectified raw maps ``[B, h, w]`` (float32, on ``images``' device) of the GT
    classes, at ``layer`` (the target module, ``layer_path`` naming it); FullGrad's at the input size.

    The model must be in eval mode (the caller's). Runs in float32 with autocast off, also from inside
    ``torch.inference_mode``; leaves every parameter's ``.grad`` as it found it and removes every hook.
    A target layer or a FullGrad bias layer that does not run exactly once per forward pass raises a
    DawsolError. ScoreCAM and AblationCAM map one image at a time (bounded memory) with
    ``channel_batch_size`` forward passes per batch.
    """
    if name not in LIBRARY_METHODS:
        raise DawsolError(f"unknown pytorch-grad-cam method {name!r} (known: {', '.join(LIBRARY_METHODS)})")
    if channel_batch_size < 1:
        raise DawsolError(f"eval.channel_batch_size must be a positive integer, not {channel_batch_size}")
    import pytorch_grad_cam as library  # heavy (scikit-learn, SciPy, matplotlib): loaded on first use

    spec = LIBRARY_METHODS[name]
    wrapper = _Logits(model)
    watched = _bias_layers(model) if spec.all_bias_layers else {layer_path: layer}
    grads_before = [(p, p.grad) for p in model.parameters()]
    with (
        torch.inference_mode(False),
        torch.set_grad_enabled(spec.gradients),
        torch.autocast(images.device.type, enabled=False),
        _quiet_progress(library),
        _calls_counted(watched) as counts,
    ):
        images = images.float().clone()  # an inference-mode tensor cannot take part in autograd
        labels = labels.clone()
        chunks = images.split(1) if spec.per_channel else (images,)
        label_chunks = labels.split(1) if spec.per_channel else (labels,)
        try:
            raw = np.concatenate(
                [
                    _run(library, name, wrapper, part, part_labels, layer, channel_batch_size)
                    for part, part_labels in zip(chunks, label_chunks, strict=True)
                ]
            )
        except AssertionError:
            if not spec.all_bias_layers:
                raise
            raw = None  # FullGrad's own check that every bias layer ran once: the counts below name the culprit
        finally:
            for parameter, grad in grads_before:
                parameter.grad = grad
        passes = counts.get(layer_path)
    _check_calls(name, counts, passes, len(chunks), spec)
    if raw is None:
        raise DawsolError(f"{name}: pytorch-grad-cam failed its own check on the bias layers' gradients")
    return F.relu(torch.from_numpy(raw)).to(images.device)


def _check_calls(name: str, counts: dict[str, int], passes: int | None, calls: int, spec: LibraryMethod) -> None:
    """Refuse a watched module that did not run once per forward pass of the library's main forward."""
    if spec.all_bias_layers:
        odd = [path for path, count in counts.items() if count != calls]
        if odd:
            raise DawsolError(
                f"{name}: FullGrad reads every Conv2d/BatchNorm2d with a bias, and {odd[0]} (of {len(odd)}) does not "
                "run exactly once per forward pass (a training-only branch of the WSOL method's head?)"
            )
        return
    minimum = calls * (2 if name == "finercam" else 1)  # FinerCAM: one forward for its targets, one for the map
    if passes is not None and passes < minimum:
        raise DawsolError(f"{name}: the target layer does not run in the forward pass: name a module the trunk calls")
    if passes is not None and not spec.per_channel and passes > minimum:
        raise DawsolError(
            f"{name}: the target layer runs more than once per forward pass, so its output is ambiguous: "
            "name a module that runs once (e.g. a whole block)"
        )
