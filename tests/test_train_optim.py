"""The official SGD groups and step schedule per backbone (models built without pretrained weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dawsol.config import deep_merge, load_params, resolve
from dawsol.da import DALoss
from dawsol.models import build_model
from dawsol.runtime import epoch_seed
from dawsol.training.optim import apply_schedule, build_optimizer, lr_factor

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARAMS = PROJECT_ROOT / "params.yaml"


def settings_for(cell: str):
    params = deep_merge(load_params(PARAMS), {"defaults": {"model": {"pretrained": "none"}}})
    for pair in params.get("pairs", {}).values():
        pair.get("model", {}).pop("pretrained", None)
    return resolve(cell, params, PARAMS)


# (cell, groups at 1 x lr, groups at 10 x lr, names that must be in the 10 x trunk group)
CASES = [
    ("synthetic/resnet18/cam-dann/seed0", {"backbone"}, {"classifier", "discriminator"}, ()),
    ("cub/resnet50/cam-dann/seed0", {"backbone"}, {"classifier", "discriminator"}, ()),
    ("cub/inception_v3/cam-dann/seed0", {"backbone"}, {"new_layers", "classifier", "discriminator"}, ("SPG_A3",)),
    ("cub/vgg16/cam-dann/seed0", {"backbone"}, {"new_layers", "classifier", "discriminator"}, ("conv6",)),
]


@pytest.mark.parametrize(("cell", "base", "tenfold", "new_names"), CASES, ids=[c[0].split("/")[1] for c in CASES])
def test_official_groups(cell: str, base: set[str], tenfold: set[str], new_names: tuple[str, ...]) -> None:
    settings = settings_for(cell)
    model = build_model(settings.model, settings.data.num_classes, settings.wsol)
    da_loss = DALoss(settings.da, settings.data.num_classes, model.feature_dim)
    optimizer = build_optimizer(model, da_loss, settings)
    train = settings.train
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == base | tenfold
    for name in base:
        assert groups[name]["lr"] == pytest.approx(train.lr)
    for name in tenfold:
        assert groups[name]["lr"] == pytest.approx(train.lr * train.lr_classifier_ratio)
    for group in optimizer.param_groups:
        assert group["nesterov"] is True
        assert group["momentum"] == pytest.approx(0.9)
        assert group["weight_decay"] == pytest.approx(train.weight_decay)
        assert group["decay"] is (group["name"] != "discriminator")

    # every trainable parameter is in exactly one group
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in [*model.parameters(), *da_loss.parameters()]}
    # ResNet's layer4 stays at 1 x lr (DA-WSOL, unlike wsolevaluation)
    trunk_names = {id(p): n for n, p in model.trunk.named_parameters()}
    backbone_names = [trunk_names[id(p)] for p in groups["backbone"]["params"]]
    if "resnet" in cell:
        assert any(n.startswith("layer4.") for n in backbone_names)
    new = [trunk_names[id(p)] for p in groups.get("new_layers", {"params": []})["params"]]
    for prefix in new_names:
        assert new and all(prefix in n for n in new)
        assert not any(prefix in n for n in backbone_names)


@pytest.mark.parametrize(
    ("frequency", "epochs", "expected"),
    [
        (3, 10, [1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001]),  # ILSVRC / OpenImages: decays at 3, 6, 9
        (30, 50, [1] * 29 + [0.1] * 21),  # CUB: epochs 1-29 at lr, 30-50 at 0.1 lr
    ],
)
def test_step_schedule_never_decays_the_discriminator(frequency: int, epochs: int, expected: list[float]) -> None:
    assert [lr_factor(e, frequency) for e in range(1, epochs + 1)] == pytest.approx(expected)
    settings = settings_for("synthetic/resnet18/cam-dann/seed0")
    model = build_model(settings.model, settings.data.num_classes, settings.wsol)
    da_loss = DALoss(settings.da, settings.data.num_classes, model.feature_dim)
    optimizer = build_optimizer(model, da_loss, settings)
    for epoch, factor in enumerate(expected, start=1):
        apply_schedule(optimizer, epoch, frequency)
        for group in optimizer.param_groups:
            scale = 1.0 if group["name"] == "discriminator" else factor
            assert group["lr"] == pytest.approx(group["base_lr"] * scale)


def test_mmd_has_no_discriminator_group() -> None:
    settings = settings_for("synthetic/resnet18/cam-mmd/seed0")
    model = build_model(settings.model, settings.data.num_classes, settings.wsol)
    optimizer = build_optimizer(model, DALoss(settings.da, settings.data.num_classes, model.feature_dim), settings)
    assert {g["name"] for g in optimizer.param_groups} == {"backbone", "classifier"}


def test_epoch_seeds_are_pure_and_distinct() -> None:
    seeds = {epoch_seed(seed, epoch, stream) for seed in range(3) for epoch in range(5) for stream in range(3)}
    assert len(seeds) == 45
    assert epoch_seed(4, 2, 1) == epoch_seed(4, 2, 1)
    assert all(0 <= s < 2**63 for s in seeds)
    torch.Generator().manual_seed(max(seeds))  # accepted by torch
