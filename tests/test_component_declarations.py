"""Components are declared where they are implemented: the registries read ``@register_*(...)`` from the source,
and a new DA loss, extractor or backbone is one module (docs/extending.md)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dawsol.components import check_declared, declared, unique
from dawsol.components.backbones import BackboneRecord, register_backbone
from dawsol.components.da_losses import DA_LOSSES, DALossRecord, register_da_loss
from dawsol.components.extractors import ExtractorRecord, register_extractor
from dawsol.errors import DawsolError

PROJECT = Path(__file__).resolve().parent.parent


def _package(root: Path, **modules: str) -> Path:
    """A package ``dawsol.kit`` under ``root`` (a stand-in for the ``dawsol`` folder) holding ``modules``."""
    folder = root / "kit"
    folder.mkdir(parents=True)
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return root


def test_declarations_are_read_from_the_source_in_file_then_line_order(tmp_path):
    root = _package(
        tmp_path / "dawsol",
        b_second="""
            @register_da_loss("second", "Second", discriminator="Critic")
            def second_term(*args):
                pass
        """,
        a_first="""
            import torch  # never imported: the source is read, not run

            def helper():
                pass

            @register_da_loss("first", "First", pairs_samples=True)
            def first_term(*args):
                pass

            @other("not a declaration")
            def elsewhere():
                pass
        """,
    )
    found = list(declared("dawsol.kit", "register_da_loss", root))
    assert [d.reference for d in found] == ["dawsol.kit.a_first:first_term", "dawsol.kit.b_second:second_term"]
    assert found[0].where == "dawsol/kit/a_first.py:7"
    records = [d.record(DALossRecord, at="term", local=("discriminator",)) for d in found]
    assert records[0] == DALossRecord("first", "First", "dawsol.kit.a_first:first_term", pairs_samples=True)
    assert records[1].discriminator == "dawsol.kit.b_second:Critic"


@pytest.mark.parametrize(
    ("declaration", "expected"),
    [
        ('@register_backbone(NAME, "T", dropped_heads=(), target_layer="x")', "literal arguments only"),
        ('@register_backbone("n", "T", droped_heads=("fc.",), target_layer="x")', "droped_heads"),
        ('@register_backbone("n", "T", dropped_heads=("fc.",))', "target_layer"),
    ],
)
def test_a_declaration_that_cannot_be_read_is_a_one_line_error_naming_its_place(tmp_path, declaration, expected):
    root = _package(tmp_path / "dawsol", family=f"{declaration}\ndef build(request):\n    pass\n")
    with pytest.raises(DawsolError) as error:
        [d.record(BackboneRecord, at="builder") for d in declared("dawsol.kit", "register_backbone", root)]
    message = str(error.value)
    assert message.startswith("dawsol/kit/family.py:1: @register_backbone(...)") and expected in message
    assert "\n" not in message


def test_a_name_declared_twice_is_an_error_naming_both():
    records = [DALossRecord("mmd", "A", "m:a"), DALossRecord("mmd", "B", "m:b")]
    with pytest.raises(DawsolError, match="DA loss 'mmd' is declared twice: on m:a and on m:b"):
        unique("DA loss", iter(records), "term")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('@register_da_loss("deep-coral", "Deep CORAL")\ndef term():\n    pass\n', "does not match"),
        ('@register_da_loss("coral", "CORAL"\ndef term():\n    pass\n', "not valid Python"),
    ],
)
def test_a_bad_name_or_source_is_a_one_line_error_naming_the_file(tmp_path, source, expected):
    root = _package(tmp_path / "dawsol", loss=source)
    with pytest.raises(DawsolError) as error:
        [d.record(DALossRecord, at="term") for d in declared("dawsol.kit", "register_da_loss", root)]
    assert str(error.value).startswith("dawsol/kit/loss.py:") and expected in str(error.value)
    assert "\n" not in str(error.value)


def test_lists_are_read_as_tuples_and_a_package_without_sources_is_an_error(tmp_path):
    root = _package(
        tmp_path / "dawsol",
        family='@register_backbone("n", "N", dropped_heads=["fc."], target_layer="x", torchvision_weights="W")\n'
        "async def build(request):\n    pass\n",
    )
    (record,) = [d.record(BackboneRecord, at="builder") for d in declared("dawsol.kit", "register_backbone", root)]
    assert record.dropped_heads == ("fc.",) and record.builder == "dawsol.kit.family:build"
    (tmp_path / "dawsol" / "empty").mkdir()
    with pytest.raises(DawsolError, match="no Python sources"):
        list(declared("dawsol.empty", "register_backbone", root))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"torchvision_weights": None}, "one source of ImageNet weights"),
        ({"imagenet_loader": "load"}, "one source of ImageNet weights"),
        ({"imagenet_head": "_fc"}, "go together"),
        ({"target_layer": ""}, "must not be empty"),
        ({"official_formats": ("da-wsol", "mine")}, "unknown official format"),
    ],
)
def test_a_backbone_record_refuses_what_cannot_work(fields, expected):
    base = {"dropped_heads": ("fc.",), "target_layer": "layer3", "torchvision_weights": "W"}
    with pytest.raises(DawsolError, match=expected):
        BackboneRecord("n", "N", "m:build", **{**base, **fields})


@pytest.mark.parametrize(
    ("register", "record", "reference"),
    [
        (register_backbone, BackboneRecord, "builder"),
        (register_da_loss, DALossRecord, "term"),
        (register_extractor, ExtractorRecord, "function"),
    ],
)
def test_each_decorator_takes_its_records_fields_with_their_defaults(register, record, reference):
    required = object()
    declared_fields = {
        name: required if parameter.default is inspect.Parameter.empty else parameter.default
        for name, parameter in inspect.signature(register).parameters.items()
    }
    record_fields = {
        field.name: required if field.default is dataclasses.MISSING else field.default
        for field in dataclasses.fields(record)
        if field.name not in (reference, "library")  # the decorated definition; pytorch-grad-cam's methods only
    }
    assert declared_fields == record_fields


def test_a_declaration_the_registry_did_not_read_fails_at_import():
    with pytest.raises(DawsolError, match=r"\('mmd' is dawsol\.da\.mmd:mmd_term's\)"):

        @register_da_loss("mmd", "DA-WSOL-MMD", pairs_samples=True)  # the name is taken by dawsol.da.mmd
        def mmd_term():
            pass

    with pytest.raises(DawsolError, match=r"'coral_probe' declared on .* \(the registry has no 'coral_probe'\)"):
        check_declared("DA loss", "coral_probe", DA_LOSSES, "term")(lambda: None)


def test_the_shipped_components_are_declared_beside_their_code():
    from dawsol.components.backbones import BACKBONES
    from dawsol.components.extractors import EXTRACTORS

    assert BACKBONES["resnet50"].builder == "dawsol.models.resnet:resnet50_trunk"
    assert BACKBONES["efficientnet_lite0"].classifier_trunk == "dawsol.models.efficientnet_lite:lite0_classifier_trunk"
    assert sorted(BACKBONES) == ["efficientnet_lite0", "inception_v3", "resnet18", "resnet50", "vgg16"]
    assert DA_LOSSES["dann"].discriminator == "dawsol.da.dann:DomainDiscriminator" and DA_LOSSES["mmd"].pairs_samples
    own = {name: record.function for name, record in EXTRACTORS.items() if record.library is None}
    assert own == {
        name: f"dawsol.evaluation.posthoc:{name}" for name in ("cam", "gradcam", "gradcampp", "pcs", "bagcams")
    }


CORAL = '''
"""CORAL as L_d: the squared Frobenius distance of the source and target feature covariances."""

import torch

from dawsol.components.da_losses import register_da_loss


@register_da_loss("coral_probe", "DA-WSOL-CORAL (probe)")
def coral_term(_discriminator, source, target, qualified, progress, schedule):
    def covariance(x):
        centred = x - x.mean(1, keepdim=True)
        return centred.transpose(1, 2) @ centred / (x.shape[1] - 1)

    per_image = (covariance(source) - covariance(target)).pow(2).sum((1, 2)) / (4 * source.shape[2] ** 2)
    return torch.where(qualified, per_image, 0.0).sum() / qualified.sum().clamp(min=1)
'''

XGRADCAM = '''
"""XGrad-CAM: the activation weighted by its gradient, normalised by the activation's sum."""

import torch
import torch.nn.functional as F

from dawsol.components.extractors import register_extractor
from dawsol.evaluation.posthoc import capture


@register_extractor("xgradcam-probe", "XGrad-CAM (probe)")
def xgradcam(model, images, labels, layer=None):
    c = capture(model, images, labels, layer)
    alpha = (c.gradient * c.activation).sum(dim=(2, 3)) / (c.activation.sum(dim=(2, 3)) + 1e-7)
    return F.relu(torch.einsum("bk,bkhw->bhw", alpha, c.activation))
'''

USE_THEM = """
import json, sys
import torch
from dawsol.config import load_params, resolve, validate_params
from dawsol.components.da_losses import DA_LOSSES
from dawsol.components.extractors import EXTRACTORS
from dawsol.da.loss import DALoss
from dawsol.evaluation.posthoc import extractor
from dawsol.models.model import build_model
import dawsol
from dawsol.report.tables import DA_NAMES, EXTRACTOR_NAMES

params = load_params("params.yaml")
params["defaults"]["da"]["coral_probe"] = {"lambda1": 0.3, "lambda2": 2.0}
params["datasets"]["synthetic"]["eval"]["cam_methods"] = ["cam", "xgradcam-probe"]
settings = resolve("synthetic/resnet18/cam-coral_probe/seed0", params)
torch.manual_seed(0)
loss = DALoss(settings.da, num_classes=4, feature_dim=8)
out = loss(torch.randn(2, 8, 6, 6, requires_grad=True), torch.randn(2, 8), torch.tensor([0, 1]), 0.5)
model = build_model(settings.model, 4, settings.wsol).eval()
maps = extractor("xgradcam-probe")(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
print(json.dumps({
    "loss": settings.da.loss, "label": DA_NAMES["coral_probe"], "package": dawsol.__file__,
    "extractor_label": EXTRACTOR_NAMES["xgradcam-probe"],
    "loss_d": float(out.loss_d), "finite": bool(torch.isfinite(out.loss_d)), "maps": list(maps.shape),
    "names": list(DA_LOSSES), "cam_methods": settings.eval.cam_methods,
}))
"""


@pytest.mark.slow
def test_a_new_da_loss_and_a_new_extractor_are_one_module_each(tmp_path):
    """Add CORAL and XGrad-CAM as one new module each to a copy of the package (under names of their own, so that
    a developer's own CORAL or XGrad-CAM in the package does not clash): the schema, the resolver, the DA
    loss, the extractor lookup and the report's labels take them with nothing else changed."""
    shutil.copytree(PROJECT / "dawsol", tmp_path / "dawsol", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "workflow"):
        source = PROJECT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    (tmp_path / "dawsol" / "da" / "coral_probe.py").write_text(CORAL)
    (tmp_path / "dawsol" / "evaluation" / "xgradcam_probe.py").write_text(XGRADCAM)
    env = {"PYTHONPATH": str(tmp_path), "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", USE_THEM], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(seen["package"]).is_relative_to(tmp_path)
    assert seen["loss"] == "coral_probe" and seen["label"] == "DA-WSOL-CORAL (probe)" and "coral_probe" in seen["names"]
    assert seen["extractor_label"] == "XGrad-CAM (probe)" and seen["maps"][0] == 2
    assert seen["finite"] and seen["loss_d"] >= 0
    assert "xgradcam-probe" in seen["cam_methods"]
