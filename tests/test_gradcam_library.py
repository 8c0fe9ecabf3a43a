"""pytorch-grad-cam's methods as extractors: cross-checked against dawsol's own maps and against the theory of
where they coincide, on every backbone and head, with the model left as it was (docs/posthoc.md section 8)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_posthoc import CASES, LABELS, OUTPUT_LAYERS, _images, _model
from tiers import small_backbones_first
from torch import Tensor, nn

from dawsol.components.extractors import EXTRACTORS, LIBRARY_METHODS
from dawsol.config import ModelSettings, WSOLSettings, load_params
from dawsol.errors import DawsolError
from dawsol.evaluation import gradcam_library, posthoc
from dawsol.models import build_model
from dawsol.report.tables import EXTRACTOR_NAMES

CHEAP = [name for name, spec in LIBRARY_METHODS.items() if not spec.per_channel]
PER_CHANNEL = [name for name, spec in LIBRARY_METHODS.items() if spec.per_channel]
PROJECT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


def _scores(method: str, model: nn.Module, images: Tensor, layer: str | None = None, **options) -> np.ndarray:
    """The protocol's score maps of ``method`` (size = the input side)."""
    side = images.shape[-1]
    maps = posthoc.extractor(method, **options)(model, images, LABELS[: len(images)], layer)
    return np.stack(posthoc.score_maps(method, maps, (side, side), side))


@pytest.mark.parametrize("backbone", small_backbones_first(CASES))
def test_library_gradcam_is_dawsols_gradcam_after_the_protocol_chain(backbone):
    model, images = _model(backbone), _images(backbone)
    np.testing.assert_allclose(_scores("lib-gradcam", model, images), _scores("gradcam", model, images), atol=1e-5)


def _library_gradcampp(a: Tensor, g: Tensor, eps: float = 1e-6) -> Tensor:
    """GradCAM++ as the library writes Eq. 19 of the paper: the spatial sum of A times the local g^3."""
    alpha = g**2 / (2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3 + eps)
    weights = (torch.where(g != 0, alpha, 0) * F.relu(g)).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * a).sum(1))


def test_library_gradcampp_is_eq_19_with_its_epsilon():
    model, images = _model("resnet18"), _images("resnet18")
    capture = posthoc.capture(model, images, LABELS)
    expected = _library_gradcampp(capture.activation, capture.gradient)
    torch.testing.assert_close(posthoc.extractor("lib-gradcampp")(model, images, LABELS), expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("backbone", small_backbones_first(OUTPUT_LAYERS))
def test_library_gradcampp_is_dawsols_at_the_output_once_epsilon_is_negligible(backbone):
    """At the trunk's output g is uniform per channel, so sum(A g^3) = g^3 sum(A): the two GradCAM++ formulas meet.
    With trained-size weights g ~ W / N is ~1e-3 and the epsilons (1e-6 against dawsol's 1e-7) still count;
    scaled up they vanish. Inside the trunk the formulas themselves differ."""
    model, images, layer = copy.deepcopy(_model(backbone)), _images(backbone), OUTPUT_LAYERS[backbone]
    gap = np.abs(_scores("lib-gradcampp", model, images, layer) - _scores("gradcampp", model, images, layer)).max()
    assert gap > 1e-3  # the epsilon at g ~ 1e-3
    with torch.no_grad():
        model.classifier.weight.mul_(1e6)
    np.testing.assert_allclose(
        _scores("lib-gradcampp", model, images, layer), _scores("gradcampp", model, images, layer), atol=1e-5
    )
    inner = "layer3" if backbone == "resnet18" else "Mixed_6e"
    gap = np.abs(_scores("lib-gradcampp", model, images, inner) - _scores("gradcampp", model, images, inner)).max()
    assert gap > 1e-2


@pytest.mark.parametrize("backbone", small_backbones_first(OUTPUT_LAYERS))
def test_hirescam_is_pcs_everywhere_and_gradcam_exactly_where_the_gradient_is_uniform(backbone):
    """HiResCAM = ReLU(sum_k g_k A_k) position-wise, PCS's formula. GradCAM averages g over positions first,
    so they meet where d y_c / dA is uniform per channel: the trunk's output, which the logits see only
    through the global average pool (ResNet's layer4, Inception's SPG_A3_2b), not one layer lower."""
    model, images, output = _model(backbone), _images(backbone), OUTPUT_LAYERS[backbone]
    inner = "layer3" if backbone == "resnet18" else "Mixed_6e"
    for layer in (output, inner):
        np.testing.assert_allclose(
            _scores("hirescam", model, images, layer), _scores("pcs", model, images, layer), atol=1e-5
        )
    np.testing.assert_allclose(
        _scores("hirescam", model, images, output), _scores("gradcam", model, images, output), atol=1e-5
    )
    assert np.abs(_scores("hirescam", model, images, inner) - _scores("gradcam", model, images, inner)).max() > 1e-2


def test_lite0s_last_module_is_not_its_output_so_hirescam_and_gradcam_part_there():
    """Lite0's features are ReLU6(_bn1(.)), a functional clamp: at ``_bn1`` the gradient is W_c / N only where
    0 < x < 6, so HiResCAM and GradCAM differ at Lite0's last module."""
    model, images = _model("efficientnet_lite0"), _images("efficientnet_lite0")
    gap = np.abs(_scores("hirescam", model, images, "_bn1") - _scores("gradcam", model, images, "_bn1")).max()
    assert gap > 1e-2


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_shapleycam_is_gradcam_on_a_piecewise_linear_network(backbone):
    """ShapleyCAM's weights are g - H A / 2 averaged; eval-mode ReLU / ReLU6 networks have a zero Hessian."""
    model, images = _model(backbone), _images(backbone)
    np.testing.assert_allclose(_scores("shapleycam", model, images), _scores("lib-gradcam", model, images), atol=1e-6)


# the full-width backbones take a minute each on one CPU thread (FullGrad and KPCA-CAM over every channel)
@pytest.mark.parametrize(
    "backbone",
    [b if b in ("resnet18", "efficientnet_lite0") else pytest.param(b, marks=pytest.mark.slow) for b in CASES],
)
def test_every_gradient_and_projection_method_runs_on_every_backbone(backbone):
    model, images = _model(backbone), _images(backbone)
    expected = posthoc.capture(model, images, LABELS).activation.shape[2:]
    for name in CHEAP:
        maps = posthoc.extractor(name)(model, images, LABELS)
        assert maps.shape == (3, *(images.shape[2:] if name == "fullgrad" else expected)), name
        assert maps.dtype == torch.float32 and (maps >= 0).all() and torch.isfinite(maps).all(), name


@pytest.mark.parametrize("method", PER_CHANNEL)
def test_per_channel_methods_do_not_depend_on_their_batch_sizes(method):
    model, images = _model("resnet18"), _images("resnet18")  # 32 channels at layer3
    one = posthoc.extractor(method, channel_batch_size=1)(model, images, LABELS)
    many = posthoc.extractor(method, channel_batch_size=32)(model, images, LABELS)
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-6)
    singles = torch.cat([posthoc.extractor(method)(model, images[i : i + 1], LABELS[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(singles, many, rtol=1e-4, atol=1e-6)
    assert (many > 0).any()


@pytest.mark.parametrize("wsol", ["acol", "spg"])
def test_heads_acol_and_spg(wsol):
    """Every method reads the logits and a trunk layer, which ACoL and SPG have; FullGrad also needs every biased
    layer to run, which their training-only branches (ACoL's head B, SPG's branches) do not, and says so."""
    options = {
        "acol": {"threshold": 0.7, "head_channels": 16},
        "spg": {"thresholds": [[0.7, 0.01], [0.5, 0.05], [0.7, 0.1]], "branch_channels": 8, "c_channels": 8},
    }[wsol]
    torch.manual_seed(0)
    model = build_model(ModelSettings("resnet18", "none", True, 0.125), 4, WSOLSettings(wsol, options)).eval()
    images = _images("resnet18")
    for name in [*CHEAP, *PER_CHANNEL]:
        if name == "fullgrad":
            with pytest.raises(DawsolError, match=r"^fullgrad: FullGrad reads every .* training-only branch") as info:
                posthoc.extractor(name)(model, images, LABELS)
            assert "\n" not in str(info.value)
            continue
        maps = posthoc.extractor(name)(model, images, LABELS)
        assert torch.isfinite(maps).all() and (maps >= 0).all(), name


def test_the_model_is_left_as_it_was_also_inside_inference_mode():
    model, images = copy.deepcopy(_model("resnet18")), _images("resnet18")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = list(model.modules())
    marker = torch.full_like(model.classifier.bias, 7.0)
    model.classifier.bias.grad = marker.clone()  # a gradient the caller had stays
    expected = {name: posthoc.extractor(name)(model, images, LABELS) for name in LIBRARY_METHODS}
    assert torch.equal(model.classifier.bias.grad, marker)
    assert all(p.grad is None for p in model.parameters() if p is not model.classifier.bias)
    assert list(model.modules()) == modules  # AblationCAM swapped its layer back
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    model.train()
    posthoc.extractor("layercam")(model, images, LABELS)
    assert model.training
    model.eval()
    with torch.inference_mode():
        for name in ("lib-gradcam", "fullgrad", "shapleycam", "eigencam"):
            torch.testing.assert_close(posthoc.extractor(name)(model, images.clone(), LABELS.clone()), expected[name])


def test_finercam_compares_the_gt_class_with_its_nearest_classes():
    """FinerCAM's target is the GT logit minus the softmax-weighted logits of the 3 classes nearest to it; with
    the comparison weights at zero it would be GradCAM, so it must differ from GradCAM somewhere."""
    model, images = _model("resnet18"), _images("resnet18")
    finer, gradcam = _scores("finercam", model, images), _scores("lib-gradcam", model, images)
    assert finer.shape == gradcam.shape and np.abs(finer - gradcam).max() > 1e-3


def test_a_target_that_runs_twice_or_never_is_refused():
    model, images = _model("resnet50"), _images("resnet50")
    with pytest.raises(DawsolError, match="runs more than once per forward pass"):
        posthoc.extractor("layercam")(model, images, LABELS, "layer3.0.relu")


def test_only_fullgrads_own_check_becomes_a_one_line_error(monkeypatch):
    """An assertion inside another library method is a bug to see whole, not FullGrad's bias-layer message."""

    def failing(*args, **kwargs):
        raise AssertionError("inside the library")

    monkeypatch.setattr(gradcam_library, "_run", failing)
    model, images = _model("resnet18"), _images("resnet18")
    with pytest.raises(AssertionError, match="inside the library"):
        posthoc.extractor("lib-gradcam")(model, images, LABELS)
    with pytest.raises(DawsolError, match=r"^fullgrad: "):
        posthoc.extractor("fullgrad")(model, images, LABELS)


def test_a_bad_method_name_is_one_line_listing_every_extractor(tmp_path):
    with pytest.raises(DawsolError) as info:
        posthoc.extractor("score-cam")
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in EXTRACTORS)
    params = tmp_path / "params.yaml"
    params.write_text(
        (PROJECT / "params.yaml").read_text().replace("    cam_methods: [cam]", "    cam_methods: [cam, score-cam]", 1)
    )
    with pytest.raises(DawsolError) as info:
        load_params(params)
    message = str(info.value)
    assert "\n" not in message and "'score-cam' is not one of" in message
    assert all(repr(name) in message for name in EXTRACTORS)


def test_every_extractor_has_a_report_label():
    assert set(EXTRACTOR_NAMES) == set(EXTRACTORS)
