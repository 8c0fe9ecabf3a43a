"""ACoL and SPG: heads, trunk variants, losses and CAMs against independent computations, on every backbone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiers import small_backbones_first
from train_fixtures import prepare_tiny_data, run_in, tiny_params, write_project

from dawsol.components.backbones import BACKBONES
from dawsol.config import ModelSettings, WSOLSettings, resolve
from dawsol.errors import DawsolError
from dawsol.evaluation import posthoc
from dawsol.models import build_model
from dawsol.models.trunk import TrunkRequest
from dawsol.models.vgg import VGGACoLTrunk, VGGSPGTrunk, vgg16_trunk
from dawsol.training.objective import Objective
from dawsol.training.parts import build_components
from dawsol.wsol.heads import SPG_IGNORE, acol_keep, masked_bce, minmax, spg_mask

SIDE = 96
OPTIONS = {
    "acol": {"threshold": 0.7, "head_channels": 16},
    "spg": {"thresholds": [[0.7, 0.01], [0.5, 0.05], [0.7, 0.1]], "branch_channels": 8, "c_channels": 8},
}
LABELS = torch.tensor([1, 3])
_TRAIN = dataclasses.replace(resolve("synthetic/resnet18/cam-none/seed0", tiny_params()).train, lr=0.01)


def _model(backbone: str, method: str, large: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    settings = ModelSettings(
        backbone=backbone,
        pretrained="none",
        large_feature_map=large,
        width=0.125 if BACKBONES[backbone].width_multiplier else 1.0,
    )
    return build_model(settings, 5, WSOLSettings(method, MappingProxyType(OPTIONS[method])))


def _images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


# the trunk's output channels per variant, and SPG's tap widths (shallow, deep), pinned for the backbones written
# here; any other backbone of the registry is held to what its trunk declares
TRUNK_DIMS = {
    ("resnet18", "acol"): 64, ("resnet18", "spg"): 64,
    ("efficientnet_lite0", "acol"): 1280, ("efficientnet_lite0", "spg"): 1280,
    ("vgg16", "acol"): 512, ("vgg16", "spg"): 512,
    ("resnet50", "acol"): 2048, ("resnet50", "spg"): 2048,
    ("inception_v3", "acol"): 768, ("inception_v3", "spg"): 1024,
}  # fmt: skip
TAP_CHANNELS = {
    "resnet18": (32, 32), "efficientnet_lite0": (112, 320), "vgg16": (512, 512), "resnet50": (1024, 1024),
    "inception_v3": (288, 768),
}  # fmt: skip


@pytest.mark.parametrize("backbone", small_backbones_first(BACKBONES))
@pytest.mark.parametrize("method", ["acol", "spg"])
def test_shapes_of_every_backbone(backbone, method):
    model = _model(backbone, method)
    model.train()
    out = model(_images(), LABELS)
    trunk_dim = TRUNK_DIMS.get((backbone, method), model.trunk.feature_dim)  # pinned where known
    assert out.trunk_out.shape[1] == trunk_dim == model.trunk.feature_dim
    side = out.features.shape[-1]
    expected_dim = OPTIONS["acol"]["head_channels"] if method == "acol" else trunk_dim
    assert out.features.shape == (2, expected_dim, side, side) == (2, model.feature_dim, side, side)
    assert out.logits.shape == (2, 5)
    if method == "acol":
        assert set(out.aux) == {"logits_b"} and out.aux["logits_b"].shape == (2, 5)
    else:
        assert {k: tuple(v.shape) for k, v in out.aux.items()} == {
            "logits_b1": (2, 1, side, side), "logits_b2": (2, 1, side, side), "logits_c": (2, 1, side, side),
            "class_map": (2, side, side),
        }  # fmt: skip
        widths = (model.head.SPG_B_1a[0].in_channels, model.head.SPG_B_2a[0].in_channels)
        assert widths == TAP_CHANNELS.get(backbone, tuple(tap.channels for tap in model.trunk.spg_taps()))
    model.eval()
    with torch.no_grad():
        evaluated = model(_images())
        cams = model.wsol_cams(evaluated, LABELS)
    assert not evaluated.aux  # no labels: the training outputs are not computed
    assert cams.shape == (2, side, side) and cams.dtype == torch.float32


@pytest.mark.parametrize("backbone", small_backbones_first(BACKBONES))
@pytest.mark.parametrize("method", ["acol", "spg"])
def test_one_training_step_then_evaluation_on_every_backbone(backbone, method):
    """A step of SGD over the model's lr groups changes the head and the estimator; the CAMs then score."""
    model = _model(backbone, method).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.param_groups(_TRAIN), momentum=0.9)
    out = model(_images(), LABELS)
    (F.cross_entropy(out.logits, LABELS) + model.method_loss(out, LABELS, (SIDE, SIDE))).backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("head.") for name in changed) and "classifier.weight" in changed
    model.eval()
    with torch.no_grad():
        scoremaps = posthoc.score_maps("cam", model.wsol_cams(model(_images(1)), LABELS), (SIDE, SIDE), SIDE)
    assert all(m.shape == (SIDE, SIDE) and np.isfinite(m).all() and m.max() == 1.0 for m in scoremaps)


def test_vgg_acol_trunk_is_the_official_layout():
    """3x3 pools with padding 1 (stride 2, the last one and pool4 under the large map stride 1), no conv6, and a 3x3
    average pool on the result, against torchvision's VGG16 convolutions written out with the same weights."""
    for large in (False, True):
        model = _model("vgg16", "acol", large=large).eval()
        trunk = model.trunk
        assert isinstance(trunk, VGGACoLTrunk) and not hasattr(trunk, "conv6")
        images = _images()
        x = images
        strides = iter([2, 2, 2, 1 if large else 2, 1])
        for layer in trunk.features:
            if isinstance(layer, torch.nn.MaxPool2d):
                x = F.max_pool2d(x, kernel_size=3, stride=next(strides), padding=1)
            else:
                x = layer(x)
        with torch.no_grad():
            expected = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
            torch.testing.assert_close(trunk(images), expected)


@pytest.mark.parametrize(
    ("backbone", "shallow", "deep"),
    [
        ("resnet18", "layer3.0", "layer3.1"),
        ("resnet50", "layer3.0", "layer3.5"),
        ("vgg16", "pool4", "SPG_A_2"),
        ("efficientnet_lite0", "_blocks.10", "_blocks.15"),
    ],
)
def test_spg_branches_read_their_taps(backbone, shallow, deep):
    """B1 and B2 equal the shared head on the outputs of the named modules, seen by hooks of the test's own."""
    model = _model(backbone, "spg").train()
    modules = dict(model.trunk.named_modules())
    seen = {}
    hooks = [
        modules[shallow].register_forward_hook(lambda m, a, o: seen.update(shallow=o)),
        modules[deep].register_forward_hook(lambda m, a, o: seen.update(deep=o)),
    ]
    out = model(_images(), LABELS)
    for hook in hooks:
        hook.remove()
    head = model.head
    with torch.no_grad():
        torch.testing.assert_close(out.aux["logits_b1"], head.SPG_B_shared(head.SPG_B_1a(seen["shallow"])))
        torch.testing.assert_close(out.aux["logits_b2"], head.SPG_B_shared(head.SPG_B_2a(seen["deep"])))


def test_heads_are_initialised_as_the_official_code():
    """xavier-uniform (bounded by sqrt(6 / (fan_in + fan_out))), zero bias; Kaiming normal for ACoL on ResNet."""
    for backbone, method, mode in [
        ("vgg16", "acol", "xavier"),
        ("resnet18", "acol", "he"),
        ("resnet18", "spg", "xavier"),
    ]:
        model = _model(backbone, method)
        convs = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)] + [model.classifier]
        for conv in convs:
            fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
            fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
            assert not conv.bias.any()
            if mode == "xavier":
                assert float(conv.weight.abs().max()) <= (6 / (fan_in + fan_out)) ** 0.5
            else:  # N(0, 2 / fan_out): the sample std within 25% on these sizes
                assert abs(float(conv.weight.std()) / (2 / fan_out) ** 0.5 - 1) < 0.25


@pytest.mark.parametrize("method", ["acol", "spg"])
def test_checkpoint_weights_posthoc_maps_and_localize_expansion(method):
    """The head's weights round-trip through a state dict; gradient maps and per-class CAMs work on the head's model."""
    model = _model("resnet18", method).eval()
    state = model.state_dict()
    assert any(key.startswith("head.") for key in state)
    rebuilt = _model("resnet18", method, seed=7).eval()
    rebuilt.load_state_dict(state)  # strict: same keys and shapes
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.wsol_cams(rebuilt(images), LABELS), model.wsol_cams(model(images), LABELS))
    for name in ("gradcam", "bagcams"):
        maps = posthoc.extractor(name)(model, images, LABELS)
        assert maps.shape[0] == 2 and torch.isfinite(maps).all() and all(p.grad is None for p in model.parameters())
    classes = torch.tensor([0, 2, 4])
    with torch.no_grad():
        out = model(images[:1])
        expanded = model.wsol_cams(out.expand(3), classes)
        one_by_one = torch.cat([model.wsol_cams(model(images[:1]), classes[k : k + 1]) for k in range(3)])
    torch.testing.assert_close(expanded, one_by_one)


def test_the_large_map_doubles_the_side_of_the_vgg_variants():
    for method in ("acol", "spg"):
        small = _model("vgg16", method)(_images()).features.shape[-1]
        large = _model("vgg16", method, large=True)(_images()).features.shape[-1]
        assert (small, large) == (SIDE // 16, SIDE // 8)


def test_acol_erases_where_the_attention_of_head_a_reaches_the_threshold():
    """Head B's logits equal B run on the trunk features zeroed where A's normalised map at the GT class >= 0.7."""
    model = _model("resnet18", "acol").train()
    torch.manual_seed(5)
    out = model(_images(), LABELS)
    head = model.head
    with torch.no_grad():
        maps = model.classifier(out.features)
        expected = []
        for b, label in enumerate(LABELS.tolist()):
            a = maps[b, label].double()
            attention = (a - a.min()) / (a.max() - a.min())
            keep = (attention < 0.7).to(out.trunk_out.dtype)
            erased = out.trunk_out[b : b + 1] * keep
            expected.append(head.classifier_b(head.body_b(erased)).mean(dim=(2, 3))[0])
        assert 0 < int((attention >= 0.7).sum()) < attention.numel()
    torch.testing.assert_close(out.aux["logits_b"].detach(), torch.stack(expected))


def test_acol_erases_at_and_above_the_threshold_in_float32_also_under_bf16():
    maps = torch.tensor([[[0.0, 0.69921875, 1.0, 0.5]]])  # 0.69921875 is bf16's nearest value below 0.7
    assert acol_keep(maps, 1.0).tolist() == [[[True, True, False, True]]]  # the maximum reaches 1.0: erased
    assert acol_keep(maps.bfloat16(), 0.7).tolist() == [[[True, True, False, True]]]  # not erased: < 0.7 in float32
    assert acol_keep(torch.full((1, 2, 2), 3.0), 0.0).all()  # a constant map erases nothing


def test_acol_loss_and_gradients():
    """L = CE(A) + CE(B); B's CE reaches neither head A nor the estimator (the attention is detached)."""
    model = _model("resnet18", "acol").train()
    images = _images()
    out = model(images, LABELS)
    torch.testing.assert_close(
        model.method_loss(out, LABELS, (SIDE, SIDE)), F.cross_entropy(out.aux["logits_b"], LABELS)
    )
    model.method_loss(out, LABELS, (SIDE, SIDE)).backward()
    assert all(p.grad is None for p in [*model.head.body_a.parameters(), *model.classifier.parameters()])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.body_b.parameters())
    assert model.trunk.conv1.weight.grad.abs().sum() > 0


def test_acol_cam_is_the_larger_normalised_map_of_the_two_heads():
    model = _model("resnet18", "acol").eval()
    with torch.no_grad():
        out = model(_images())
        cams = model.wsol_cams(out, LABELS)
        for b, label in enumerate(LABELS.tolist()):
            a = model.classifier(out.features)[b, label]
            a = (a - a.min()) / (a.max() - a.min())
            keep = (a < 0.7).to(out.trunk_out.dtype)
            mb = model.head.classifier_b(model.head.body_b(out.trunk_out[b : b + 1] * keep))[0, label]
            mb = (mb - mb.min()) / (mb.max() - mb.min())
            torch.testing.assert_close(cams[b], torch.maximum(a, mb))
    assert float(cams.min()) >= 0 and float(cams.max()) == 1.0


def _mask_by_loops(attention: torch.Tensor, high: float, low: float) -> torch.Tensor:
    """SPG's pseudo-mask written out per image, as the method defines it."""
    mask = torch.full_like(attention, SPG_IGNORE)
    for b in range(attention.shape[0]):
        foreground = attention[b] > high
        if int(foreground.sum()) < 30:
            foreground = attention[b] > 0.7 * attention[b].max()
        mask[b][foreground] = 1.0
    mask[attention < low] = 0.0
    return mask


def test_spg_masks_take_the_fallback_foreground_and_let_background_win():
    generator = torch.Generator().manual_seed(0)
    attention = torch.rand(3, 20, 20, generator=generator)
    attention[1] *= 0.5  # nothing above 0.7: the fallback threshold 0.7 x max applies
    attention[2, :2, :2] = 1.0  # 4 pixels above 0.95
    attention[2] = attention[2].clamp(max=0.9)
    for high, low in [(0.7, 0.01), (0.5, 0.05), (0.95, 0.6), (0.3, 0.3)]:
        torch.testing.assert_close(spg_mask(attention, high, low), _mask_by_loops(attention, high, low))
    mask = spg_mask(attention, 0.7, 0.1)
    assert (mask[1] == 1).any() and set(mask.unique().tolist()) <= {0.0, 1.0, SPG_IGNORE}


def test_masked_bce_ignores_and_is_zero_when_everything_is_ignored():
    logits = torch.randn(2, 4, 4)
    mask = torch.full((2, 4, 4), SPG_IGNORE)
    assert float(masked_bce(logits, mask)) == 0.0
    mask[0, 0, 0], mask[1, 2, 3] = 1.0, 0.0
    expected = (F.softplus(-logits[0, 0, 0]) + F.softplus(logits[1, 2, 3])) / 2
    torch.testing.assert_close(masked_bce(logits, mask), expected)


def test_spg_loss_is_the_three_bce_terms_at_the_input_size():
    model = _model("resnet18", "spg").train()
    out = model(_images(), LABELS)
    (h1, l1), (h2, l2), (h3, l3) = OPTIONS["spg"]["thresholds"]

    def up(x):
        return F.interpolate(x.detach(), size=(SIDE, SIDE), mode="bilinear", align_corners=False)[:, 0]

    def bce(logits, mask):
        kept = mask != SPG_IGNORE
        return F.binary_cross_entropy_with_logits(logits[kept], mask[kept])

    class_map = model.classifier(out.features)[torch.arange(2), LABELS][:, None]  # the map at the GT class
    attention = up(class_map)
    attention = torch.stack([(a - a.min()) / (a.max() - a.min()) for a in attention])
    b1, b2, c = up(out.aux["logits_b1"]), up(out.aux["logits_b2"]), up(out.aux["logits_c"])
    expected = (
        bce(b2, _mask_by_loops(attention, h1, l1))
        + bce(b1, _mask_by_loops(torch.sigmoid(b2), h2, l2))
        + bce(c, _mask_by_loops((torch.sigmoid(b1) + torch.sigmoid(b2)) / 2, h3, l3))
    )
    loss = model.method_loss(out, LABELS, (SIDE, SIDE))
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    for name in ("SPG_B_1a", "SPG_B_2a", "SPG_B_shared", "SPG_C"):
        assert all(p.grad is not None for p in getattr(model.head, name).parameters()), name
    assert model.classifier.weight.grad is None  # the guidance is detached from the class map
    assert model.trunk.layer3[0].conv1.weight.grad.abs().sum() > 0  # B1 and B2 train the trunk below their taps


def test_spg_cam_is_the_raw_class_map():
    model = _model("vgg16", "spg").eval()
    with torch.no_grad():
        out = model(_images())
        torch.testing.assert_close(model.wsol_cams(out, LABELS), model.cams(out.features, LABELS))


def test_inception_spg_reads_mixed_6d_and_vgg_spg_keeps_conv4_and_conv5_weights():
    model = _model("inception_v3", "spg").eval()
    seen = {}
    hooks = [
        model.trunk.Mixed_6d.register_forward_hook(lambda m, a, o: seen.update(deep=o)),
        model.trunk.Mixed_6a.register_forward_pre_hook(lambda m, a: seen.update(shallow=a[0])),
    ]
    with torch.no_grad():
        out = model.train()(_images(), LABELS)
    for hook in hooks:
        hook.remove()
    head = model.head
    with torch.no_grad():
        torch.testing.assert_close(out.aux["logits_b2"], head.SPG_B_shared(head.SPG_B_2a(seen["deep"])))
        torch.testing.assert_close(out.aux["logits_b1"], head.SPG_B_shared(head.SPG_B_1a(seen["shallow"])))

    loaded = {}

    def load(net):
        torch.manual_seed(3)
        for module in net.features:
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.normal_(module.weight)
        loaded.update({k: v.clone() for k, v in net.state_dict().items()})

    trunk = vgg16_trunk(TrunkRequest(load, variant="spg"))
    assert isinstance(trunk, VGGSPGTrunk)
    state = trunk.state_dict()
    for official, original in [("SPG_A_1.0", 17), ("SPG_A_1.4", 21), ("SPG_A_2.0", 24), ("SPG_A_2.4", 28)]:
        torch.testing.assert_close(state[f"{official}.weight"], loaded[f"features.{original}.weight"])
    assert "features.17.weight" not in state and trunk.new_layers == ("SPG_A_1", "SPG_A_2", "SPG_A_3")


def test_heads_train_at_the_classifier_rate():
    train = _TRAIN
    assert train.lr_classifier_ratio == 10
    for backbone, method in [("resnet50", "acol"), ("vgg16", "spg")]:
        groups = {g["name"]: g for g in _model(backbone, method).param_groups(train)}
        assert groups["head"]["lr"] == groups["classifier"]["lr"] == pytest.approx(0.1)
        assert sum(p.numel() for p in groups["head"]["params"]) == sum(
            p.numel() for p in _model(backbone, method).head.parameters()
        )
    groups = {g["name"]: g for g in _model("vgg16", "spg").param_groups(train)}
    assert groups["backbone"]["lr"] == 0.01 and groups["new_layers"]["lr"] == pytest.approx(0.1)
    slow = WSOLSettings("spg", MappingProxyType({**OPTIONS["spg"], "head_lr_ratio": 1}))
    model = build_model(ModelSettings("resnet18", "none", False, 0.125), 5, slow)
    groups = {g["name"]: g for g in model.param_groups(train)}
    assert groups["head"]["lr"] == 0.01 and groups["classifier"]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("method", ["acol", "spg"])
def test_determinism_and_degenerate_inputs(method):
    first = _model("inception_v3", method, seed=1).train()
    torch.manual_seed(9)
    a = first.method_loss(first(_images(), LABELS), LABELS, (SIDE, SIDE))
    second = _model("inception_v3", method, seed=1).train()
    torch.manual_seed(9)
    b = second.method_loss(second(_images(), LABELS), LABELS, (SIDE, SIDE))
    assert torch.equal(a, b)

    model = _model("resnet18", method).train()
    flat = torch.zeros(2, 3, SIDE, SIDE)  # constant maps: the normalised attention is NaN
    loss = model.method_loss(model(flat, LABELS), LABELS, (SIDE, SIDE))
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        cams = model.wsol_cams(model(flat), LABELS)
    scoremaps = posthoc.score_maps("cam", cams, (SIDE, SIDE), SIDE)
    assert all(np.isfinite(s).all() for s in scoremaps)
    single = torch.full((1, 6, 6), 2.0)
    assert torch.isnan(minmax(single)).all()


def test_spg_thresholds_must_be_three_ordered_pairs():
    bad = {**OPTIONS["spg"], "thresholds": [[0.1, 0.7], [0.5, 0.05], [0.7, 0.1]]}
    with pytest.raises(DawsolError, match=r"wsol\.spg\.thresholds"):
        build_model(ModelSettings("vgg16", "none", False, 1.0), 5, WSOLSettings("spg", MappingProxyType(bad)))


@pytest.mark.parametrize("method", ["acol", "spg"])
def test_da_wsol_on_top_clusters_the_pixel_features_the_estimator_reads(method):
    """The assigner's features are head A's (ACoL) or the trunk's (SPG): those the score estimator is applied to."""
    settings = resolve(f"synthetic/resnet18/{method}-mmd/seed0", tiny_params())
    torch.manual_seed(0)
    model, da_loss, augmentation = build_components(settings, torch.device("cpu"))
    assert da_loss.assigner.class_anchors.shape[-1] == model.feature_dim == model.classifier.in_channels
    da_loss.eval()  # the anchors stay as they are, so the terms can be recomputed
    objective = Objective(settings, model, model, da_loss, augmentation, total_iterations=10)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(1)
    losses = objective(images, labels, settings.da.start_epoch + 1, 2, torch.Generator().manual_seed(7))
    torch.manual_seed(1)
    out = model(images, labels)
    ce = F.cross_entropy(out.logits, labels) + model.method_loss(out, labels, (32, 32))
    torch.testing.assert_close(losses.loss_c, ce)
    terms = da_loss(out.features, out.pooled, labels, 0.2)
    torch.testing.assert_close(losses.loss_d, terms.loss_d)
    torch.testing.assert_close(losses.loss_u, terms.loss_u)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["synthetic/resnet18/acol-none/seed0", "synthetic/resnet18/spg-dann/seed0"])
def test_a_synthetic_cell_of_each_method_trains_and_evaluates(tmp_path: Path, tiny_data: Path, cell: str) -> None:
    eval_settings = {"eval": {"cam_methods": ["cam", "gradcam"]}}
    project = write_project(tmp_path / "project", tiny_data, datasets={"synthetic": eval_settings})
    for command in ("train", "evaluate"):
        assert run_in(project, command, cell, "--no-tracking") == 0
    metrics = json.loads((project / "results" / "cells" / cell / "metrics.json").read_text())
    assert metrics["wsol"] == cell.split("/")[2].split("-")[0]
    assert 0 <= metrics["splits"]["test"]["MaxBoxAccV2"] <= 100 and "gradcam" in metrics["extractors"]
    samples = np.load(project / "results" / "cells" / cell / "cam_samples.npz")
    assert samples["cams"].shape[0] > 0 and np.isfinite(samples["cams"].astype(np.float64)).all()
    assert (project / "results" / "cells" / cell / "cams.png").stat().st_size > 0
