"""Post-hoc extractors against independent computations: gradients, map formulas, equivalences, chains, hooks."""

from __future__ import annotations

import copy
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiers import small_backbones_first
from torch import Tensor, nn

from dawsol.components.backbones import BACKBONES
from dawsol.components.extractors import OWN_EXTRACTORS
from dawsol.components.wsol_methods import WSOL_METHODS
from dawsol.config import ModelSettings, WSOLSettings
from dawsol.errors import DawsolError
from dawsol.evaluation import posthoc
from dawsol.models import build_model
from dawsol.protocol import prepare_scoremap

pytestmark = pytest.mark.usefixtures("one_thread")


# (backbone, width, input side): small inputs (Inception needs at least 75 px), random weights; any other backbone of
# the registry runs at width 1.0 and 64 px
CASES = {
    "resnet18": (0.125, 64),
    "resnet50": (1.0, 64),
    "vgg16": (1.0, 64),
    "inception_v3": (1.0, 80),
    "efficientnet_lite0": (1.0, 64),
}
NUM_CLASSES = 4
# small heads for the methods that add one; the other methods build with no options
WSOL_OPTIONS = {
    "adl": {"drop_rate": 0.5, "threshold": 0.9},
    "acol": {"threshold": 0.7, "head_channels": 16},
    "spg": {"thresholds": [[0.7, 0.01], [0.5, 0.05], [0.7, 0.1]], "branch_channels": 8, "c_channels": 8},
}
LABELS = torch.tensor([0, 1, 2])
# the trunk's output, where the gradient of y_c is uniform
OUTPUT_LAYERS = {"resnet18": "layer4", "inception_v3": "SPG_A3_2b"}
# ReLU calls above each backbone's default target layer (ResNet50: layer4's 3 Bottlenecks x 3 calls)
GUIDED_CALLS = {"resnet18": 4, "resnet50": 9, "vgg16": 1, "inception_v3": 1, "efficientnet_lite0": 1}


def _case(backbone: str) -> tuple[float, int]:
    return CASES.get(backbone, (1.0, 64))


@cache
def _model(backbone: str, wsol: str = "cam") -> nn.Module:
    """One untrained eval model per backbone, with a nonzero bias; built once (the big ones are slow)."""
    torch.manual_seed(0)
    options = WSOL_OPTIONS.get(wsol, {})
    model = build_model(
        ModelSettings(backbone, "none", True, _case(backbone)[0]), NUM_CLASSES, WSOLSettings(wsol, options)
    )
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.5, -0.3, 0.2, 0.1]))
    return model.eval()


@cache
def _images(backbone: str, batch: int = 3) -> Tensor:
    side = _case(backbone)[1]
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))


def _plain_gradient(model: nn.Module, images: Tensor, labels: Tensor, path: str) -> tuple[Tensor, Tensor]:
    """The hooked module's output and ``d y_c / dA``, by a full forward with autograd everywhere."""
    saved = []
    module = dict(model.trunk.named_modules())[path]
    handle = module.register_forward_hook(lambda m, args, out: saved.append(out))
    try:
        with torch.enable_grad():
            logits = model(images).logits
            scores = logits.gather(1, labels[:, None]).sum()
            (gradient,) = torch.autograd.grad(scores, saved[0])
    finally:
        handle.remove()
    return saved[0].detach(), gradient


class _GuidedReLU(torch.autograd.Function):
    """ReLU (or ReLU6) whose backward passes only the non-negative part of its ordinary input gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, top: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.top = top
        return x.clamp(0, top)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return (grad * ((x > 0) & (x < ctx.top))).clamp(min=0), None


class _GuidedReLUModule(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _GuidedReLU.apply(x, float("inf"))


def _resnet_upper(trunk: nn.Module, a: Tensor) -> Tensor:
    layer4 = copy.deepcopy(trunk.layer4)
    for block in layer4:
        block.relu = _GuidedReLUModule()
    return layer4(a)


def _inception_upper(trunk: nn.Module, a: Tensor) -> Tensor:
    spg = copy.deepcopy(trunk.SPG_A3_2b)
    spg[1] = _GuidedReLUModule()
    return spg(a)


def _vgg_upper(trunk: nn.Module, a: Tensor) -> Tensor:
    return _GuidedReLU.apply(trunk.conv6(a), float("inf"))  # conv6's functional ReLU, guided as the official module


def _lite_upper(trunk: nn.Module, a: Tensor) -> Tensor:
    return _GuidedReLU.apply(trunk._bn1(trunk._conv_head(a)), 6.0)  # the head's ReLU6


# the trunk above each backbone's default target layer, written out by hand with every ReLU guided: BagCAMs'
# independent reference (a backbone without one is covered by the registry-wide tests only)
GUIDED_UPPER = {
    "resnet18": _resnet_upper,
    "resnet50": _resnet_upper,
    "inception_v3": _inception_upper,
    "vgg16": _vgg_upper,
    "efficientnet_lite0": _lite_upper,
}


def _guided_upper(model: nn.Module, a: Tensor) -> Tensor:
    """Logits from the default target's output ``a``: the trunk above it, written out, with every ReLU guided."""
    x = GUIDED_UPPER[model.backbone_name](model.trunk, a)
    return model.classifier(x.mean(dim=(2, 3))[:, :, None, None]).flatten(1)


def _guided_gradient(model: nn.Module, a: Tensor, labels: Tensor, *, log: bool = True, sign: float = 1.0) -> Tensor:
    """The guided gradient of ``log(y_c)`` (autograd's log: derivative 1 / y), or of ``sign * y_c``, at ``a``."""
    a = a.clone().requires_grad_()
    with torch.enable_grad():
        scores = _guided_upper(model, a).gather(1, labels[:, None])
        (gradient,) = torch.autograd.grad((torch.log(scores) if log else sign * scores).sum(), a)
    return gradient


def _bagcams_map(a: Tensor, g: Tensor) -> Tensor:
    t = g * a
    return sum(F.relu((1 + t[:, k].mean(dim=(1, 2), keepdim=True)) * t[:, k]) for k in range(t.shape[1]))


def _gradcampp_map(a: Tensor, g: Tensor) -> Tensor:
    """GradCAM++ in float64 numpy, per image and channel, from the formula."""
    a, g = a.double().numpy(), g.double().numpy()
    out = np.zeros((a.shape[0], *a.shape[2:]))
    for b in range(a.shape[0]):
        for k in range(a.shape[1]):
            delta = 2 * g[b, k] ** 2 + (a[b, k] * g[b, k] ** 3).sum()
            delta[delta == 0] = 1.0
            weight = (g[b, k] ** 2 / (delta + 1e-7) * np.maximum(g[b, k], 0)).sum()
            out[b] += weight * a[b, k]
    return torch.from_numpy(np.maximum(out, 0))


def _close(actual: Tensor, expected: Tensor, rtol: float = 1e-4) -> None:
    """Equal up to float32 rounding, relative to the map's largest value."""
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=rtol * scale)


def _normalised(maps: Tensor, size: int) -> np.ndarray:
    return np.stack(posthoc.score_maps("gradcam", maps, (size, size), size))


@pytest.mark.parametrize("backbone", small_backbones_first(BACKBONES))
def test_plain_gradient_maps_match_autograd_and_their_formulas(backbone):
    model, images = _model(backbone), _images(backbone)
    c = posthoc.capture(model, images, LABELS)
    a, g = _plain_gradient(model, images, LABELS, c.layer.path)
    _close(c.activation, a)
    _close(c.gradient, g)
    assert c.guided_calls == 0
    _close(posthoc.gradcam(model, images, LABELS), F.relu(torch.einsum("bk,bkhw->bhw", g.mean(dim=(2, 3)), a)))
    _close(posthoc.pcs(model, images, LABELS), F.relu((g * a).sum(1)))
    _close(posthoc.gradcampp(model, images, LABELS), _gradcampp_map(a, g), rtol=1e-3)


@pytest.mark.parametrize("backbone", small_backbones_first(GUIDED_UPPER))
def test_bagcams_gradient_is_the_guided_gradient_of_log_y_c(backbone):
    model, images = _model(backbone), _images(backbone)
    c = posthoc.capture(model, images, LABELS, log_score=True, guided=True)
    assert c.guided_calls == GUIDED_CALLS[backbone], "the guided hooks fire on this trunk"
    expected = _guided_gradient(model, c.activation, LABELS)
    _close(c.gradient, expected)
    _close(posthoc.bagcams(model, images, LABELS), _bagcams_map(c.activation, expected))
    plain = posthoc.capture(model, images, LABELS, log_score=True)
    unguided = _bagcams_map(plain.activation, plain.gradient)
    assert np.abs(_normalised(posthoc.bagcams(model, images, LABELS), 16) - _normalised(unguided, 16)).max() > 0.01


def test_resnet50_guides_every_relu_call_of_layer4_and_none_above_the_output():
    model, images = _model("resnet50"), _images("resnet50")
    assert posthoc.capture(model, images, LABELS, layer="layer4", guided=True).guided_calls == 0
    assert posthoc.capture(model, images, LABELS, layer="layer2", guided=True).guided_calls == 6 * 3 + 3 * 3
    assert posthoc.capture(model, images, LABELS, layer="layer3.4", guided=True).guided_calls == 1 * 3 + 3 * 3


def test_a_negative_logit_flips_the_gradient_before_the_guided_relus():
    model = copy.deepcopy(_model("resnet18"))
    images, labels = _images("resnet18")[:1], LABELS[:1]
    with torch.no_grad():
        logit = float(model(images).logits[0, 0] - model.classifier.bias[0])
    grads = {}
    for sign in (1.0, -1.0):
        with torch.no_grad():
            model.classifier.bias[0] = sign * (abs(logit) + 1.0) - logit  # y_c = sign * (|logit| + 1)
        c = posthoc.capture(model, images, labels, log_score=True, guided=True)
        assert torch.sign(c.scores).item() == sign
        _close(c.gradient, _guided_gradient(model, c.activation, labels))
        # |y_c| times it is the guided gradient of sign * y_c: for y_c < 0 the rectification keeps negative evidence
        _close(c.gradient * c.scores.abs(), _guided_gradient(model, c.activation, labels, log=False, sign=sign))
        grads[sign] = c.gradient * c.scores.abs()
        plain = posthoc.capture(model, images, labels, log_score=True)
        grads[sign, "plain"] = plain.gradient * plain.scores
    _close(grads[1.0, "plain"], grads[-1.0, "plain"])  # unguided: the sign cancels
    assert not torch.allclose(grads[1.0], -grads[-1.0], atol=1e-6), "guided: not just a sign flip"


def test_a_zero_logit_gives_an_all_zero_bagcams_score_map():
    model = copy.deepcopy(_model("resnet18"))
    with torch.no_grad():
        model.classifier.weight[1].zero_()
        model.classifier.bias[1] = 0.0
    maps = posthoc.bagcams(model, _images("resnet18"), LABELS)
    assert torch.isnan(maps[1]).all()
    scoremaps = posthoc.score_maps("bagcams", maps, (64, 64), 64)
    assert not scoremaps[1].any() and scoremaps[0].max() == 1.0


@pytest.mark.parametrize("backbone", small_backbones_first(["resnet18", "inception_v3"]))
def test_gradcam_at_the_output_is_the_rectified_bias_free_cam_and_equals_pcs(backbone):
    model, images = _model(backbone), _images(backbone)
    layer = OUTPUT_LAYERS[backbone]
    with torch.no_grad():
        out = model(images)
        bias_free = model.cams(out.features, LABELS) - model.classifier.bias[LABELS][:, None, None]
    pixels = out.features.shape[2] * out.features.shape[3]
    c = posthoc.capture(model, images, LABELS, layer)
    weight = model.classifier.weight.flatten(1)[LABELS].detach()
    _close(c.gradient, (weight / pixels)[:, :, None, None].expand_as(c.gradient))  # uniform: W_c / N
    gradcam = posthoc.gradcam(model, images, LABELS, layer)
    _close(gradcam, F.relu(bias_free) / pixels)
    _close(posthoc.pcs(model, images, LABELS, layer), gradcam)


def test_gradcampp_with_and_without_exp_score_agree_until_exp_overflows():
    model = copy.deepcopy(_model("resnet18"))
    images, side = _images("resnet18"), CASES["resnet18"][1]
    with_exp = posthoc.extractor("gradcampp", gradcampp_exp_score=True)
    assert posthoc.extractor("gradcampp") is posthoc.gradcampp
    plain = posthoc.score_maps("gradcampp", posthoc.gradcampp(model, images, LABELS), (side, side), side)
    scaled = posthoc.score_maps("gradcampp", with_exp(model, images, LABELS), (side, side), side)
    np.testing.assert_allclose(np.stack(scaled), np.stack(plain), atol=1e-5)
    with torch.no_grad():
        model.classifier.bias[0] = 100.0  # exp(y_c) is inf in float32
    overflow = posthoc.score_maps("gradcampp", with_exp(model, images, LABELS), (side, side), side)
    assert not overflow[0].any() and overflow[1].max() == 1.0
    assert posthoc.score_maps("gradcampp", posthoc.gradcampp(model, images, LABELS), (side, side), side)[0].max() == 1.0


@pytest.mark.parametrize("method", OWN_EXTRACTORS)
def test_batch_size_invariance(method):
    model, images = _model("resnet18"), _images("resnet18")
    extract = posthoc.extractor(method)
    batched = extract(model, images, LABELS)
    single = torch.cat([extract(model, images[i : i + 1], LABELS[i : i + 1]) for i in range(3)])
    # GradCAM++ cubes the gradient, so a batch's other float32 conv algorithm shows up to ~1e-3 of the map's peak
    _close(batched, single, rtol=2e-3 if method == "gradcampp" else 1e-4)


@pytest.mark.parametrize("backbone", small_backbones_first(BACKBONES))
def test_extraction_leaves_no_grad_no_hooks_and_the_model_unchanged(backbone):
    model, images = _model(backbone), _images(backbone)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inplace = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    for name in OWN_EXTRACTORS:
        posthoc.extractor(name)(model, images, LABELS)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert inplace == [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    model.train()
    try:
        posthoc.gradcam(model, images, LABELS)
        assert model.training, "the previous mode comes back"
    finally:
        model.eval()


def test_extractors_run_inside_inference_mode_with_the_same_result():
    model, images = _model("resnet18"), _images("resnet18")
    expected = {name: posthoc.extractor(name)(model, images, LABELS) for name in OWN_EXTRACTORS}
    with torch.inference_mode():
        inference_images, inference_labels = images.clone(), LABELS.clone()
        for name in OWN_EXTRACTORS:
            got = posthoc.extractor(name)(model, inference_images, inference_labels)
            torch.testing.assert_close(got, expected[name])


def test_score_map_chains():
    model, images, side = _model("resnet18"), _images("resnet18"), CASES["resnet18"][1]
    cams = posthoc.cam(model, images, LABELS)
    with torch.no_grad():  # the chain of dawsol.evaluation.scoring
        reference = model.cams(model(images).features.float(), LABELS).double().cpu().numpy()
    for got, want in zip(posthoc.score_maps("cam", cams, (side, side), side), reference, strict=True):
        np.testing.assert_array_equal(got, prepare_scoremap(want, side))
    maps = posthoc.gradcam(model, images, LABELS)
    up = F.interpolate(maps[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    flat = up.flatten(1)
    expected = (flat - flat.min(1, keepdim=True).values) / (
        flat.max(1, keepdim=True).values - flat.min(1, keepdim=True).values
    )
    got = posthoc.score_maps("gradcam", maps, (side, side), side)
    for k in range(3):
        want = expected[k].view(side, side).double().numpy()  # the float32 min-max, kept as it is
        assert got[k].dtype == np.float64
        np.testing.assert_array_equal(got[k], np.zeros_like(want) if np.isnan(want).any() else want)
    constant = posthoc.score_maps("pcs", torch.zeros(1, 4, 4), (16, 16), 16)[0]
    assert constant.shape == (16, 16) and not constant.any()


@pytest.mark.parametrize("backbone", small_backbones_first(BACKBONES))
@pytest.mark.parametrize("wsol", list(WSOL_METHODS))
def test_every_trunk_variant_has_a_default_target_layer_that_runs(backbone, wsol):
    """The record's default (or the variant's own) names a module of every variant's trunk, and it runs once."""
    model = _model(backbone, wsol)
    layer = posthoc.target_layer(model, None)
    assert layer.module is dict(model.trunk.named_modules())[layer.path]
    assert posthoc.capture(model, _images(backbone)[:1], LABELS[:1]).activation.dim() == 4


def test_target_layer_defaults_and_resolution():
    expected = {
        "resnet18": ("layer3", "layer3.1"),
        "resnet50": ("layer3", "layer3.5"),
        "vgg16": ("features", "features.30"),
        "inception_v3": ("SPG_A3_1b", "SPG_A3_1b"),
        "efficientnet_lite0": ("_blocks", "_blocks.15"),
    }
    for backbone, (name, path) in expected.items():
        model = _model(backbone)
        layer = posthoc.target_layer(model, None)
        assert (layer.name, layer.path) == (name, path)
        assert layer.module is dict(model.trunk.named_modules())[path]
    resnet = _model("resnet18")
    assert posthoc.target_layer(resnet, "layer4").path == "layer4.1"
    assert posthoc.target_layer(resnet, "layer2.0.conv1").path == "layer2.0.conv1"


@pytest.mark.parametrize(
    ("backbone", "name"), small_backbones_first([("inception_v3", "layer3"), ("resnet18", "layer9"), ("vgg16", "")])
)
def test_an_unknown_target_layer_is_one_line_naming_it_and_the_candidates(backbone, name):
    with pytest.raises(DawsolError) as error:
        posthoc.target_layer(_model(backbone), name)
    message = str(error.value)
    assert "\n" not in message and repr(name) in message and "candidates:" in message
    assert ("Mixed_6e" if backbone == "inception_v3" else "conv") in message


def test_a_target_that_runs_twice_or_never_is_refused():
    resnet = _model("resnet18")
    images = _images("resnet18")
    with pytest.raises(DawsolError, match=r"'layer4\.1\.relu' runs more than once"):
        posthoc.gradcam(resnet, images, LABELS, "layer4.1.relu")
    with pytest.raises(DawsolError, match="'adl' runs more than once"):  # ADL's one module, called 3 times
        posthoc.gradcam(_model("resnet18", "adl"), images, LABELS, "adl")
    unused = copy.deepcopy(resnet)
    unused.trunk.spare = nn.Identity()
    with pytest.raises(DawsolError, match="'spare' does not run"):
        posthoc.pcs(unused, images, LABELS, "spare")
    assert all(not m._forward_hooks for m in resnet.modules())


def test_an_in_place_op_after_the_target_does_not_change_the_captured_activation():
    vgg, images = _model("vgg16"), _images("vgg16")
    c = posthoc.capture(vgg, images, LABELS, "features.28")  # conv5_3, followed by an in-place ReLU
    assert (c.activation < 0).any()
    _close(c.gradient, _plain_gradient_before_in_place_relu(vgg, images))


def _plain_gradient_before_in_place_relu(vgg: nn.Module, images: Tensor) -> Tensor:
    """``d y_c / d conv5_3`` with the network written out (non-in-place ReLUs)."""
    x = images
    for layer in vgg.trunk.features[:29]:
        x = F.relu(x) if isinstance(layer, nn.ReLU) else layer(x)
    a = x.detach().requires_grad_()
    with torch.enable_grad():
        features = F.relu(vgg.trunk.conv6(F.relu(a)))
        logits = vgg.classifier(features.mean(dim=(2, 3))[:, :, None, None]).flatten(1)
        (gradient,) = torch.autograd.grad(logits.gather(1, LABELS[:, None]).sum(), a)
    return gradient


def test_an_unknown_method_is_refused():
    with pytest.raises(DawsolError, match=r"unknown extractor 'GradCAM' \(known: cam, gradcam, "):
        posthoc.extractor("GradCAM")
    with pytest.raises(DawsolError, match="unknown extractor"):
        posthoc.score_maps("cam++", torch.zeros(1, 2, 2), (4, 4), 4)


def test_the_guided_rule_acts_on_a_relus_input_and_on_a_functional_relus_module_output():
    # SPG_A3_2b.1 is the trunk's last ReLU module: at its output nothing above is guided, and the gradient is uniform
    inception, images = _model("inception_v3"), _images("inception_v3")
    c = posthoc.capture(inception, images, LABELS, "SPG_A3_2b.1", log_score=True, guided=True)
    weight = inception.classifier.weight.flatten(1)[LABELS].detach()
    pixels = c.activation.shape[2] * c.activation.shape[3]
    assert c.guided_calls == 0
    _close(c.gradient, (weight / pixels / c.scores[:, None])[:, :, None, None].expand_as(c.gradient))
    # VGG's conv6 output feeds its functional ReLU, which is above the target and guided
    vgg, images = _model("vgg16"), _images("vgg16")
    c = posthoc.capture(vgg, images, LABELS, "conv6", log_score=True, guided=True)
    weight = vgg.classifier.weight.flatten(1)[LABELS].detach()
    pixels = c.activation.shape[2] * c.activation.shape[3]
    plain = (weight / pixels / c.scores[:, None])[:, :, None, None] * (c.activation > 0)
    assert c.guided_calls == 1
    _close(c.gradient, plain.clamp(min=0))
    assert (plain < 0).any()
