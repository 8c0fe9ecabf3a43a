"""The training objective of one batch on its own: no loop, no optimizer."""

from __future__ import annotations

import torch
from train_fixtures import tiny_params

from dawsol.config import deep_merge, resolve
from dawsol.runtime import deterministic
from dawsol.training.objective import Objective
from dawsol.training.parts import build_components
from dawsol.wsol import input_augmentation


def _objective(cell: str, overrides: dict | None = None):
    params = deep_merge(tiny_params(), overrides or {})
    settings = resolve(cell, params)
    torch.manual_seed(0)
    model, da_loss, augmentation = build_components(settings, torch.device("cpu"))
    return settings, model, da_loss, augmentation


def _batch(settings):
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(6, 3, settings.data.image_size, settings.data.image_size, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    return images, labels


def test_cutmix_mixes_the_da_terms_of_both_label_sets_by_the_area_ratio():
    cell = "synthetic/resnet18/cutmix-mmd/seed0"
    settings, model, da_loss, augmentation = _objective(cell, {"defaults": {"wsol": {"cutmix": {"prob": 1.0}}}})
    da_loss.eval()  # the anchors stay as they are, so the terms can be recomputed
    objective = Objective(settings, model, model, da_loss, augmentation, total_iterations=10)
    images, labels = _batch(settings)
    epoch = settings.da.start_epoch + 1
    torch.manual_seed(1)
    losses = objective(images, labels, epoch, 4, torch.Generator().manual_seed(7))

    torch.manual_seed(1)
    mixed = input_augmentation(settings.wsol).apply(images, labels, torch.Generator().manual_seed(7))
    assert mixed.labels_b is not None and 0 < mixed.weight_a < 1
    out = model(mixed.images)
    a = da_loss(out.features, out.pooled, mixed.labels_a, 0.4)
    b = da_loss(out.features, out.pooled, mixed.labels_b, 0.4)
    w = mixed.weight_a
    ce = w * torch.nn.functional.cross_entropy(out.logits, mixed.labels_a)
    ce = ce + (1 - w) * torch.nn.functional.cross_entropy(out.logits, mixed.labels_b)
    torch.testing.assert_close(losses.loss_c, ce)
    torch.testing.assert_close(losses.loss_d, w * a.loss_d + (1 - w) * b.loss_d)
    torch.testing.assert_close(losses.loss_u, w * a.loss_u + (1 - w) * b.loss_u)
    da = settings.da
    torch.testing.assert_close(losses.loss, losses.loss_c + da.lambda1 * losses.loss_d + da.lambda2 * losses.loss_u)


def test_the_da_terms_wait_for_the_start_epoch():
    settings, model, da_loss, augmentation = _objective("synthetic/resnet18/cam-dann/seed0")
    objective = Objective(settings, model, model, da_loss, augmentation, total_iterations=10)
    images, labels = _batch(settings)
    before = objective(images, labels, settings.da.start_epoch, 0, torch.Generator())
    assert before.loss_d.item() == 0 and before.loss_u.item() == 0
    torch.testing.assert_close(before.loss, before.loss_c)
    after = objective(images, labels, settings.da.start_epoch + 1, 0, torch.Generator())
    assert after.loss_d.item() != 0


def test_deterministic_gives_the_process_back_as_it_was():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        with deterministic(torch.device("cpu")):
            assert torch.are_deterministic_algorithms_enabled()
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(was)
