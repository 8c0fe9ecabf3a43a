"""Post-hoc localization maps of a trained WSOL model: CAM, GradCAM, GradCAM++, PCS and BagCAMs, and pytorch-grad-cam's
methods (docs/posthoc.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dawsol.components import known, load
from dawsol.components.extractors import EXTRACTORS, register_extractor
from dawsol.errors import DawsolError
from dawsol.evaluation import gradcam_library
from dawsol.models.model import WSOLModel
from dawsol.models.registry import backbone
from dawsol.protocol import prepare_scoremap


def _default_layer(model: WSOLModel) -> str:
    """The trunk variant's own default target layer where it lacks the backbone's, else the backbone's record's
    (docs/posthoc.md section 3)."""
    return model.trunk.own_target_layer or backbone(model.backbone_name).target_layer


GRADCAMPP_EPS = 1e-7


class TargetLayer(NamedTuple):
    """A resolved target layer: the setting's name, the path of the hooked trunk module, the module."""

    name: str
    path: str
    module: nn.Module


class Capture(NamedTuple):
    """The target layer's output ``A`` [B, C, h, w], the score's gradient there, the GT logits ``y_c`` [B]."""

    activation: Tensor
    gradient: Tensor
    scores: Tensor
    guided_calls: int  # ReLU calls above the target whose gradient was rectified (0 without ``guided``)
    layer: TargetLayer


Extractor = Callable[[WSOLModel, Tensor, Tensor, str | None], Tensor]


def target_layer(model: WSOLModel, name: str | None = None) -> TargetLayer:
    """Resolve ``name`` (a dotted module path inside ``model.trunk``; None: the backbone's default).

    A container the trunk iterates (ResNet's ``layerN``, VGG's ``features``, Lite0's ``_blocks``)
    resolves to its last child. An unknown name raises a DawsolError listing the trunk's children.
    """
    backbone = model.backbone_name
    if name is None:
        name = _default_layer(model)
    modules = dict(model.trunk.named_modules())
    if not name or name not in modules:
        children = ", ".join(child for child, _ in model.trunk.named_children())
        raise DawsolError(
            f"posthoc target layer {name!r} is not a module of the {backbone} trunk; "
            f"candidates: {children} (or a dotted submodule of one, e.g. {next(n for n in modules if '.' in n)})"
        )
    path = name
    if name in model.trunk.iterated:
        path = f"{name}.{len(modules[name]) - 1}"
    return TargetLayer(name, path, modules[path])


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block, its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _positive_part(grad: Tensor) -> Tensor:
    return grad.clamp(min=0)


def capture(
    model: WSOLModel,
    images: Tensor,
    labels: Tensor,
    layer: str | None = None,
    *,
    log_score: bool = False,
    guided: bool = False,
) -> Capture:
    """The target layer's output and the gradient of each image's GT score with respect to it, batched.

    The score is the raw logit ``y_c`` (``log_score``: its natural log, i.e. a seed of ``1 / y_c``).
    The trunk runs without gradients up to the target layer, whose output becomes a leaf, so
    autograd stops there and no parameter gets a ``.grad``. ``guided`` rectifies the gradient of
    every ``nn.ReLU`` module call above the target (and of the trunk's guided functional ReLU).
    Runs in eval mode and float32, also from inside ``torch.inference_mode``; every hook is removed.
    """
    target = target_layer(model, layer)
    leaves: list[Tensor] = []
    guided_calls = 0

    def take(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise DawsolError(f"posthoc target layer {target.path!r} returns {type(output).__name__}, not a tensor")
        if leaves:
            raise DawsolError(
                f"posthoc target layer {target.path!r} runs more than once per forward pass, so its output is "
                "ambiguous: name a module that runs once (e.g. a whole block)"
            )
        leaf = output.detach().requires_grad_()
        leaves.append(leaf)
        torch.set_grad_enabled(True)  # autograd from here on; the enclosing no_grad restores the mode
        return leaf.clone()  # later in-place ops (e.g. an in-place ReLU) must not touch the captured values

    def guide(module: nn.Module, args: tuple, output: Tensor) -> None:
        nonlocal guided_calls
        if output.requires_grad:  # above the target: below it no graph is recorded
            output.register_hook(_positive_part)
            guided_calls += 1

    modules = dict(model.trunk.named_modules())
    with ExitStack() as hooks:
        # a ReLU module's guide runs before ``take``: the rule acts on the ReLU's input, so a ReLU at the
        # target itself is below the captured output; a functional ReLU follows its module's output
        if guided:  # the trunk's ReLUs and a method head's (ACoL's head A)
            for module in model.modules():
                if isinstance(module, nn.ReLU):
                    hooks.callback(module.register_forward_hook(guide).remove)
        hooks.callback(target.module.register_forward_hook(take).remove)
        if guided:
            for path in model.trunk.guided_functional:
                hooks.callback(modules[path].register_forward_hook(guide).remove)
        with (
            torch.inference_mode(False),
            torch.no_grad(),
            torch.autocast(images.device.type, enabled=False),
            _evaluating(model),
        ):
            labels = labels.clone()  # an inference-mode tensor cannot be saved for backward
            logits = model(images).logits.float()
    if not leaves:
        raise DawsolError(
            f"posthoc target layer {target.path!r} does not run in the {model.backbone_name} forward pass: "
            "name a module the trunk calls"
        )
    with torch.inference_mode(False), torch.enable_grad():
        scores = logits.gather(1, labels[:, None]).squeeze(1)
        seed = scores.detach().reciprocal() if log_score else torch.ones_like(scores)
        (gradient,) = torch.autograd.grad(scores, leaves[0], grad_outputs=seed)
    activation = leaves[0].detach().float()
    return Capture(activation, gradient.float(), scores.detach(), guided_calls, target)


@register_extractor("cam", "CAM", gradient=False)
def cam(model: WSOLModel, images: Tensor, labels: Tensor, layer: str | None = None) -> Tensor:
    """CAM ``W_c^T F + b_c`` at the feature resolution (docs/posthoc.md section 2.1), or the WSOL method's own
    (ACoL's, docs/wsol-methods.md); ``layer`` does not apply."""
    with torch.no_grad(), _evaluating(model):
        return model.wsol_cams(model(images), labels)


@register_extractor("gradcam", "GradCAM")
def gradcam(model: WSOLModel, images: Tensor, labels: Tensor, layer: str | None = None) -> Tensor:
    """GradCAM: ReLU of the activation weighted by the spatial mean of ``d y_c / dA`` (section 2.2)."""
    c = capture(model, images, labels, layer)
    alpha = c.gradient.mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * c.activation).sum(1))


@register_extractor("gradcampp", "GradCAM++")
def gradcampp(
    model: WSOLModel, images: Tensor, labels: Tensor, layer: str | None = None, *, exp_score: bool = False
) -> Tensor:
    """GradCAM++ (section 2.3); ``exp_score`` keeps the reference's ``exp(y_c)`` factor (overflow included)."""
    c = capture(model, images, labels, layer)
    g, a = c.gradient, c.activation
    denominator = 2 * g.pow(2) + (a * g.pow(3)).sum(dim=(2, 3), keepdim=True)
    denominator = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    coefficients = g.pow(2) / (denominator + GRADCAMPP_EPS)
    positive = F.relu(c.scores.exp()[:, None, None, None] * g) if exp_score else F.relu(g)
    weights = (coefficients * positive).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * a).sum(1))


@register_extractor("pcs", "PCS")
def pcs(model: WSOLModel, images: Tensor, labels: Tensor, layer: str | None = None) -> Tensor:
    """PCS: ReLU of the per-position gradient x activation summed over channels (section 2.4)."""
    c = capture(model, images, labels, layer)
    return F.relu((c.gradient * c.activation).sum(1))


@register_extractor("bagcams", "BagCAMs")
def bagcams(model: WSOLModel, images: Tensor, labels: Tensor, layer: str | None = None) -> Tensor:
    """BagCAMs: guided gradient of ``log y_c`` times activation, rectified per channel, then summed (section 2.5)."""
    c = capture(model, images, labels, layer, log_score=True, guided=True)
    t = c.gradient * c.activation
    mu = 1 + t.mean(dim=(2, 3), keepdim=True)
    return F.relu(mu * t).sum(1)


def library_method(
    method: str,
    model: WSOLModel,
    images: Tensor,
    labels: Tensor,
    layer: str | None = None,
    *,
    channel_batch_size: int = gradcam_library.CHANNEL_BATCH_SIZE,
) -> Tensor:
    """A pytorch-grad-cam method's rectified raw maps at the resolved target layer, in eval mode (section 8)."""
    target = target_layer(model, layer)
    with _evaluating(model):
        return gradcam_library.library_maps(
            method, model, images, labels, target.module, target.path, channel_batch_size=channel_batch_size
        )


def extractor(
    method: str, *, gradcampp_exp_score: bool = False, channel_batch_size: int = gradcam_library.CHANNEL_BATCH_SIZE
) -> Extractor:
    """The function of extractor ``method`` (its record in ``dawsol.components.extractors``), GradCAM++ with
    ``exp(y_c)`` if asked; a pytorch-grad-cam method bound to its name, ScoreCAM and AblationCAM with
    ``channel_batch_size`` forward passes per batch."""
    record = known("extractor", method, EXTRACTORS)
    function = load(record.function)
    if record.library is not None:
        return partial(function, method, channel_batch_size=channel_batch_size)
    if method == "gradcampp" and gradcampp_exp_score:
        return partial(function, exp_score=True)
    return function


def score_maps(method: str, maps: Tensor, input_size: tuple[int, int], size: int) -> list[np.ndarray]:
    """Raw maps ``[B, h, w]`` of ``method`` as the protocol's float64 ``size`` x ``size`` score maps.

    CAM: the chain of ``dawsol.evaluation.scoring`` (float64, ``prepare_scoremap``). The gradient methods
    (``gradient`` on their record):
    bilinear to the input images' ``input_size`` (H, W), per-image min-max in float32 (a constant
    map gives NaN), float64, then ``prepare_scoremap`` (an identity resize at equal size; NaN: zeros).
    """
    if known("extractor", method, EXTRACTORS).gradient:
        maps = F.interpolate(maps[:, None].float(), size=input_size, mode="bilinear", align_corners=False)[:, 0]
        low = maps.amin(dim=(1, 2), keepdim=True)
        maps = (maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low)
    return [prepare_scoremap(m, size) for m in maps.double().cpu().numpy()]
