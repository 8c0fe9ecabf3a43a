"""One record per component: the schema's enums are the registries, every record's references resolve, and
settings round-trip through a checkpoint."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiers import small_backbones_first

from dawsol.components import load
from dawsol.components.backbones import BACKBONES
from dawsol.components.da_losses import DA_LOSSES
from dawsol.components.extractors import EXTRACTORS
from dawsol.components.wsol_methods import WSOL_METHODS
from dawsol.config import SCHEMA_PATH, Settings, grid_cells, load_params, load_schema, resolve, validate_params
from dawsol.errors import DawsolError

PROJECT = Path(__file__).resolve().parent.parent
SCHEMA = load_schema()
SETTINGS = SCHEMA["$defs"]["settings"]["properties"]


def test_the_schema_file_names_no_component_and_its_enums_are_the_registries():
    written = yaml.safe_load(SCHEMA_PATH.read_text())
    for key, registry in (("backbone", BACKBONES), ("wsol_method", WSOL_METHODS), ("da_loss", DA_LOSSES)):
        assert "enum" not in written["$defs"][key], f"{key}: the names come from the registry, not the file"
        assert SCHEMA["$defs"][key]["enum"] == list(registry)
    assert SCHEMA["$defs"]["extractor"]["enum"] == list(EXTRACTORS)
    assert SCHEMA["properties"]["backbones"]["propertyNames"] == {"$ref": "#/$defs/backbone"}
    assert SCHEMA["$defs"]["grid"]["properties"]["wsol"]["items"] == {"$ref": "#/$defs/wsol_method"}
    assert SETTINGS["eval"]["properties"]["cam_methods"]["items"] == {"$ref": "#/$defs/extractor"}


def test_every_wsol_method_has_its_options_block_in_the_schema():
    assert list(SETTINGS["wsol"]["properties"]) == list(WSOL_METHODS)


@pytest.mark.parametrize(
    ("tree", "wrong"),
    [
        ({"grid": {"wsol": ["camm"]}}, "camm"),
        ({"eval": {"cam_methods": ["gradcamm"]}}, "gradcamm"),
        ({"da": {"mmd_x": {"loss": "mmdd"}}}, "mmdd"),
    ],
)
def test_an_unregistered_name_is_a_one_line_error_listing_the_registered_ones(tree, wrong):
    definition = "grid" if "grid" in tree else "settings"
    with pytest.raises(DawsolError) as error:
        validate_params(tree.get("grid", tree), "params.yaml", definition=definition)
    message = str(error.value)
    assert wrong in message and "\n" not in message
    registry = {"grid": WSOL_METHODS, "eval": EXTRACTORS, "da": DA_LOSSES}[next(iter(tree))]
    assert all(name in message for name in registry)


def test_reading_the_names_imports_no_torch():
    code = "import sys, dawsol.config, dawsol.components.backbones, dawsol.report.tables; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_record_resolves(name):
    """Its references resolve (the record checks its own fields: ``BackboneRecord.__post_init__``)."""
    record = BACKBONES[name]
    builder = load(record.builder)  # TrunkBuilder: (TrunkRequest) -> Trunk
    assert callable(builder) and len(inspect.signature(builder).parameters) == 1
    if record.torchvision_weights is not None:
        import torchvision

        assert hasattr(torchvision.models, record.torchvision_weights)
    else:
        assert callable(load(record.imagenet_loader))
    if record.classifier_trunk is not None:
        assert callable(load(record.classifier_trunk))


@pytest.mark.parametrize("name", list(WSOL_METHODS))
def test_every_wsol_method_record_resolves(name):
    from dawsol.models.trunk import TRUNK_VARIANTS

    record = WSOL_METHODS[name]
    assert record.trunk_variant in TRUNK_VARIANTS and record.title
    for reference in (record.augment, record.trunk_layer, record.head):
        assert reference is None or callable(load(reference))


@pytest.mark.parametrize("name", list(DA_LOSSES))
def test_every_da_loss_record_resolves_and_a_block_named_after_it_needs_no_loss_key(name):
    record = DA_LOSSES[name]
    assert callable(load(record.term)) and record.title
    assert record.discriminator is None or callable(load(record.discriminator))
    params = load_params(PROJECT / "params.yaml")
    params["defaults"]["da"][name] = {"lambda1": 0.1, "lambda2": 0.2}
    assert resolve(f"synthetic/resnet18/cam-{name}/seed0", params).da.loss == name


def test_a_da_block_not_named_after_a_loss_names_one_and_a_contradiction_is_an_error():
    params = load_params(PROJECT / "params.yaml")
    assert resolve("synthetic/resnet18/cam-mmd_nolu/seed0", params).da.loss == "mmd"
    params["defaults"]["da"]["mmd_nolu"].pop("loss")
    with pytest.raises(DawsolError, match=r"da\.mmd_nolu\.loss is missing: ") as error:
        resolve("synthetic/resnet18/cam-mmd_nolu/seed0", params)
    assert f"({', '.join(DA_LOSSES)})" in str(error.value)
    params["defaults"]["da"]["mmd"]["loss"] = "mmd"  # the old form, the name said twice: still the same settings
    same = resolve("synthetic/resnet18/cam-mmd/seed0", params)
    assert same == resolve("synthetic/resnet18/cam-mmd/seed0", load_params(PROJECT / "params.yaml"))
    params["defaults"]["da"]["mmd"]["loss"] = "dann"
    with pytest.raises(DawsolError, match=r"da\.mmd\.loss is dann, but the block is named after the loss mmd"):
        resolve("synthetic/resnet18/cam-mmd/seed0", params)


@pytest.mark.parametrize("name", list(EXTRACTORS))
def test_every_extractor_record_resolves(name):
    from dawsol.evaluation import posthoc

    assert callable(posthoc.extractor(name)) and EXTRACTORS[name].title


def test_the_report_labels_are_the_records_titles():
    from dawsol.report.tables import BACKBONE_NAMES, EXTRACTOR_NAMES, WSOL_NAMES

    assert {name: BACKBONE_NAMES[name] for name in BACKBONES} == {n: r.title for n, r in BACKBONES.items()}
    assert {n: r.title for n, r in WSOL_METHODS.items()} == WSOL_NAMES
    assert {n: r.title for n, r in EXTRACTORS.items()} == EXTRACTOR_NAMES


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


@pytest.mark.parametrize("name", small_backbones_first(BACKBONES))
def test_every_backbones_large_feature_map_halves_its_output_stride(name):
    """``large_feature_map`` is output stride 8 where the trunk's own is 16 (docs/extending.md, a new backbone)."""
    import torch

    from dawsol.models.registry import build_trunk

    width = 0.125 if BACKBONES[name].width_multiplier else 1.0
    images = torch.rand(1, 3, 128, 128)
    sides = []
    for large in (False, True):
        trunk = build_trunk(name, "none", large, width).eval()
        with torch.no_grad():
            sides.append(trunk(images).shape[-1])
    assert sides[1] >= 2 * sides[0] - 1, sides  # Inception's valid convolutions lose a pixel
