"""WSOL methods: HaS and CutMix on the input, ADL inside every backbone."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import torch
from tiers import small_backbones_first

from dawsol.config import ModelSettings, WSOLSettings
from dawsol.models import build_model
from dawsol.wsol import ADL, input_augmentation


def _wsol(method: str, **options) -> WSOLSettings:
    return WSOLSettings(method, MappingProxyType(options))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_cam_and_adl_have_no_input_augmentation():
    assert input_augmentation(_wsol("cam")) is None
    assert input_augmentation(_wsol("adl", drop_rate=0.5, threshold=0.9)) is None


def test_has_zeroes_whole_grid_cells_with_the_drop_rate():
    has = input_augmentation(_wsol("has", grid_size=8, drop_rate=0.5))
    images = torch.rand(16, 3, 60, 60) + 0.5  # no zeros of its own; 60 is not a multiple of 8
    labels = torch.arange(16)
    batch = has.apply(images, labels, _gen())
    assert batch.labels_b is None and batch.weight_a == 1.0 and batch.labels_a is labels
    assert not torch.equal(batch.images, images) and (images >= 0.5).all(), "input unchanged"
    hidden = batch.images == 0
    assert torch.equal(hidden, hidden[:, :1].expand_as(hidden)), "all channels of a cell together"
    cells = hidden[:, 0, ::8, ::8]  # one pixel per cell
    expanded = cells.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :60, :60]
    assert torch.equal(hidden[:, 0], expanded), "whole cells, including the partial last ones"
    assert 0.35 < cells.float().mean() < 0.65
    assert torch.equal(has.apply(images, labels, _gen()).images, batch.images), "deterministic under a seed"
    off = input_augmentation(_wsol("has", grid_size=0, drop_rate=0.5))
    assert torch.equal(off.apply(images, labels, _gen()).images, images)


def test_cutmix_pastes_a_box_from_the_permuted_batch_and_weights_by_area():
    cutmix = input_augmentation(_wsol("cutmix", beta=1.0, prob=1.0))
    images = torch.arange(8.0)[:, None, None, None].expand(8, 3, 32, 32).contiguous()
    labels = torch.arange(8) * 10
    for seed in range(5):
        batch = cutmix.apply(images, labels, _gen(seed))
        pasted = batch.images[:, 0] != images[:, 0]
        source = batch.labels_b // 10  # which image each one got its patch from
        changed = pasted.any(0)
        fraction = changed.float().mean().item()
        if fraction > 0:
            assert torch.equal(batch.images[:, 0][:, changed], source[:, None].float().expand(-1, int(changed.sum())))
        assert batch.weight_a == pytest.approx(1.0 - fraction)
        assert sorted(batch.labels_b.tolist()) == labels.tolist()
        again = cutmix.apply(images, labels, _gen(seed))
        assert torch.equal(again.images, batch.images) and again.weight_a == batch.weight_a
    never = input_augmentation(_wsol("cutmix", beta=1.0, prob=0.0))
    plain = never.apply(images, labels, _gen())
    assert plain.labels_b is None and plain.weight_a == 1.0 and torch.equal(plain.images, images)


def test_adl_drop_mask_importance_map_and_eval_identity():
    x = torch.rand(2, 4, 5, 5)
    attention = x.mean(1, keepdim=True)
    drop = ADL(drop_rate=1.0, threshold=0.8).train()
    expected = x * (attention < 0.8 * attention.amax((2, 3), keepdim=True))
    torch.testing.assert_close(drop(x), expected)
    importance = ADL(drop_rate=0.0, threshold=0.8).train()
    torch.testing.assert_close(importance(x), x * torch.sigmoid(attention))
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize(
    ("backbone", "width", "size"),
    small_backbones_first(
        [("resnet18", 0.125, 64), ("resnet50", 1.0, 64), ("vgg16", 1.0, 64), ("inception_v3", 1.0, 64)]
    ),
)
def test_adl_runs_at_the_reference_placements_on_every_backbone(backbone, width, size):
    torch.manual_seed(0)
    model = build_model(ModelSettings(backbone, "none", True, width), 3, _wsol("adl", drop_rate=0.5, threshold=0.9))
    adl = [m for m in model.modules() if isinstance(m, ADL)]
    assert len(adl) == 1
    calls = []
    adl[0].register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]))
    images = torch.randn(1, 3, size, size)
    with torch.no_grad():
        model.train()(images)
    expected_channels = {
        "resnet18": [32, 64, 64],  # after layer3[0], layer4[0], layer4[-1] at width 1/8
        "resnet50": [1024, 2048, 2048],
        "vgg16": [256, 512, 512],  # after pool3, conv4_3, conv5_3
        "inception_v3": [288, 768, 1024],  # after Mixed_5d, Mixed_6e, SPG_A3_2b
    }[backbone]
    assert calls == expected_channels
    calls.clear()
    with torch.no_grad():
        model.eval()(images)
    assert len(calls) == 3  # called, but the identity in eval mode
