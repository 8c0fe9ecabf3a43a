"""One name per component: the schema's enums are the registries' keys, and settings round-trip through a checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from dawsol.config import SCHEMA_PATH, Settings, grid_cells, load_params, resolve, schema_wsol_methods
from dawsol.da.loss import DA_LOSSES
from dawsol.evaluation.posthoc import DEFAULT_TARGET_LAYERS, EXTRACTORS
from dawsol.models.registry import BACKBONES
from dawsol.wsol import WSOL_METHODS

PROJECT = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def test_schema_backbones_are_the_backbone_registry():
    assert SCHEMA["properties"]["backbones"]["propertyNames"]["enum"] == list(BACKBONES)


def test_schema_wsol_methods_are_the_wsol_registry():
    assert schema_wsol_methods() == list(WSOL_METHODS)
    assert list(SCHEMA["$defs"]["settings"]["properties"]["wsol"]["properties"]) == list(WSOL_METHODS)


def test_schema_da_losses_are_the_da_loss_registry():
    assert SCHEMA["$defs"]["da_method"]["properties"]["loss"]["enum"] == list(DA_LOSSES)


def test_schema_cam_methods_are_the_extractor_registry():
    assert SCHEMA["$defs"]["settings"]["properties"]["eval"]["properties"]["cam_methods"]["items"]["enum"] == list(
        EXTRACTORS
    )
    assert set(DEFAULT_TARGET_LAYERS) == set(BACKBONES)  # every backbone has a default target layer


@pytest.mark.parametrize("profile", [None, "paper", "search"])
def test_settings_round_trip_through_to_dict(profile):
    params = load_params(PROJECT / "params.yaml", profile)
    for cell in grid_cells(params, PROJECT / "params.yaml"):
        settings = resolve(cell, params, PROJECT / "params.yaml")
        again = Settings.from_dict(settings.to_dict())
        assert again == settings
        assert again.digest() == settings.digest()


def test_weights_digest_ignores_the_eval_block_only():
    params = load_params(PROJECT / "params.yaml")
    settings = resolve("synthetic/resnet18/cam-mmd/seed0", params, PROJECT / "params.yaml")
    other_eval = dataclasses.replace(settings, eval=dataclasses.replace(settings.eval, batch_size=3))
    other_lr = dataclasses.replace(settings, train=dataclasses.replace(settings.train, lr=settings.train.lr * 2))
    assert other_eval.weights_digest() == settings.weights_digest()
    assert other_eval.digest() != settings.digest()
    assert other_lr.weights_digest() != settings.weights_digest()
