"""Backbones (shapes, dims, CAM modifications), the score estimator, lr groups and pretrained loading."""

from __future__ import annotations

import hashlib
import urllib.error
from functools import cache
from pathlib import Path

import pytest
import torch
import torchvision
from http_fixtures import serving
from tiers import small_backbones_first

from dawsol.config import ModelSettings, TrainSettings, WSOLSettings
from dawsol.errors import DawsolError
from dawsol.models import build_model, pretrained
from dawsol.models.resnet import scaled_resnet18

CAM = WSOLSettings("cam")


@cache
def _model(backbone: str, large: bool):
    """One untrained model per (backbone, large map) for the whole module: the big ones are slow to build."""
    torch.manual_seed(0)
    return build_model(ModelSettings(backbone, "none", large, 1.0), 7, CAM).eval()


def _train(lr: float = 0.01, ratio: float = 10.0) -> TrainSettings:
    return TrainSettings(
        epochs=1,
        batch_size=2,
        lr=lr,
        lr_classifier_ratio=ratio,
        lr_decay_frequency=1,
        weight_decay=0.0,
        momentum=0.9,
        nesterov=True,
        eval_every=1,
        device="cpu",
        bf16=False,
        channels_last=False,
    )


@pytest.mark.parametrize(
    ("backbone", "large", "dim", "side"),
    small_backbones_first(
        [
            ("resnet50", True, 2048, 28),
            ("resnet50", False, 2048, 14),
            ("inception_v3", True, 1024, 28),
            ("inception_v3", False, 1024, 14),
            ("vgg16", True, 1024, 28),
            ("vgg16", False, 1024, 14),
            ("resnet18", True, 512, 56),
            ("resnet18", False, 512, 28),
        ]
    ),
)
def test_feature_map_size_and_dim_at_224(backbone, large, dim, side):
    model = _model(backbone, large)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert model.feature_dim == dim
    assert out.features.shape == (1, dim, side, side)
    assert out.pooled.shape == (1, dim)
    assert out.logits.shape == (1, 7)
    assert (out.features >= 0).all(), "pixel features are post-ReLU"


def test_small_backbone_at_64px_has_a_16x16_map():
    model = build_model(ModelSettings("resnet18", "none", True, 0.125), 8, CAM).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.features.shape == (2, 64, 16, 16)


def test_estimator_is_a_1x1_conv_with_bias_shared_by_logits_and_cams():
    torch.manual_seed(0)
    model = build_model(ModelSettings("resnet18", "none", True, 0.125), 5, CAM).eval()
    assert model.classifier.kernel_size == (1, 1) and model.classifier.bias is not None
    assert torch.equal(model.classifier.bias, torch.zeros(5))
    with torch.no_grad():
        model.classifier.bias.copy_(torch.arange(5.0))
        out = model(torch.randn(3, 3, 64, 64))
        labels = torch.tensor([0, 4, 2])
        cams = model.cams(out.features, labels)
    assert cams.shape == (3, 16, 16)
    # the estimator is linear, so the mean of the CAM is the logit of its class
    torch.testing.assert_close(cams.mean((1, 2)), out.logits.gather(1, labels[:, None]).squeeze(1))
    conv = torch.nn.functional.conv2d(out.features, model.classifier.weight, model.classifier.bias)
    torch.testing.assert_close(cams, conv[torch.arange(3), labels])


def _group_lrs(model) -> dict[str, float]:
    groups = model.param_groups(_train(lr=0.01, ratio=10.0))
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}, "every parameter is in a group"
    return {name: g["lr"] for g in groups for name, p in model.named_parameters() if any(p is q for q in g["params"])}


def test_lr_groups_resnet_backbone_all_at_lr_estimator_at_ratio():
    model = build_model(ModelSettings("resnet18", "none", True, 0.125), 3, CAM)
    lrs = _group_lrs(model)
    assert lrs["trunk.layer4.1.conv2.weight"] == pytest.approx(0.01)
    assert lrs["trunk.conv1.weight"] == pytest.approx(0.01)
    assert lrs["classifier.weight"] == pytest.approx(0.1)
    assert lrs["classifier.bias"] == pytest.approx(0.1)


def test_lr_groups_inception_new_spg_layers_and_vgg_conv6_at_ratio():
    inception = _group_lrs(_model("inception_v3", True))
    assert inception["trunk.Mixed_6e.branch1x1.conv.weight"] == pytest.approx(0.01)
    assert inception["trunk.Conv2d_1a_3x3.conv.weight"] == pytest.approx(0.01)
    assert inception["trunk.SPG_A3_1b.0.weight"] == pytest.approx(0.1)
    assert inception["trunk.SPG_A3_2b.0.bias"] == pytest.approx(0.1)
    vgg = _group_lrs(_model("vgg16", False))
    assert vgg["trunk.features.28.weight"] == pytest.approx(0.01)
    assert vgg["trunk.conv6.weight"] == pytest.approx(0.1)


def test_pretrained_path_loads_torchvision_state_dict(tmp_path: Path):
    torch.manual_seed(1)
    reference = scaled_resnet18(0.25)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    model = build_model(ModelSettings("resnet18", str(path), True, 0.25), 4, CAM)
    assert torch.equal(model.trunk.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert torch.equal(model.trunk.bn1.running_var, reference.bn1.running_var)
    # the modified strides do not touch the weights
    assert model.trunk.layer3[0].conv1.stride == (1, 1) and reference.layer3[0].conv1.stride == (2, 2)


def test_pretrained_path_errors(tmp_path: Path):
    settings = lambda p: ModelSettings("resnet18", str(p), True, 0.25)  # noqa: E731
    with pytest.raises(DawsolError, match="does not exist"):
        build_model(settings(tmp_path / "missing.pth"), 4, CAM)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(DawsolError, match="not a readable torch state dict"):
        build_model(settings(corrupt), 4, CAM)
    wrong = tmp_path / "wrong.pth"
    torch.save(scaled_resnet18(0.5).state_dict(), wrong)  # another width: shapes differ
    with pytest.raises(DawsolError, match=r"of another shape \(e\.g\. conv1\.weight: \[32, 3, 7, 7\] in the file"):
        build_model(settings(wrong), 4, CAM)
    other = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, other)
    missing = r"not a resnet18 state dict .*\d+ missing \(e\.g\. conv1\.weight\), 1 unexpected"
    with pytest.raises(DawsolError, match=missing):
        build_model(settings(other), 4, CAM)


def test_pretrained_dawsol_checkpoint_fine_tunes_from_another_cells_trunk(tmp_path: Path):
    torch.manual_seed(2)
    source = build_model(
        ModelSettings("resnet18", "none", True, 0.25), 8, WSOLSettings("adl", {"drop_rate": 0.5, "threshold": 0.9})
    )
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "epoch": 3, "model": source.state_dict(), "records": []}, path)
    model = build_model(ModelSettings("resnet18", str(path), True, 0.25), 3, CAM)
    assert set(model.trunk.state_dict()) == set(source.trunk.state_dict())
    assert all(torch.equal(v, source.trunk.state_dict()[k]) for k, v in model.trunk.state_dict().items())
    assert model.classifier.weight.shape[0] == 3  # the other task's estimator is left out
    assert torch.equal(model.classifier.bias, torch.zeros(3))

    other = tmp_path / "other.pt"
    torch.save(
        {"format": 1, "model": build_model(ModelSettings("resnet18", "none", True, 0.125), 8, CAM).state_dict()}, other
    )
    with pytest.raises(DawsolError, match="checkpoint of another trunk") as err:
        build_model(ModelSettings("resnet18", str(other), True, 0.25), 3, CAM)
    assert "\n" not in str(err.value) and str(other) in str(err.value)


def test_imagenet_offline_and_uncached_names_the_file(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(DawsolError, match=r"resnet18-f37072fd\.pth") as err:
        build_model(ModelSettings("resnet18", "imagenet", True, 1.0), 4, CAM)
    assert str(expected) in str(err.value)


def _named_by_hash(folder: Path, state: dict) -> Path:
    """``state`` saved as ``resnet18-<its sha256 prefix>.pth``, the way torch.hub names its files."""
    raw = folder / "raw.pth"
    torch.save(state, raw)
    named = folder / f"resnet18-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth"
    raw.rename(named)
    return named


def test_imagenet_uses_the_cache_under_torch_home(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    torch.manual_seed(2)
    reference = torchvision.models.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    cached = _named_by_hash(cache, reference.state_dict())
    monkeypatch.setattr(pretrained, "imagenet_url", lambda enum: f"https://example.invalid/models/{cached.name}")
    model = build_model(ModelSettings("resnet18", "imagenet", True, 1.0), 4, CAM)
    assert torch.equal(model.trunk.layer1[0].conv2.weight, reference.layer1[0].conv2.weight)
    cached.write_bytes(b"truncated")
    with pytest.raises(DawsolError, match="sha256") as error:
        build_model(ModelSettings("resnet18", "imagenet", True, 1.0), 4, CAM)
    assert str(cached) in str(error.value) and "\n" not in str(error.value)


class _Payload:
    """A pickle that creates a file when unpickled: what a poisoned cache file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_poisoned_cache_file_is_refused_and_runs_no_code(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    marker = tmp_path / "pwned"
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's real name
    cached.parent.mkdir(parents=True)
    torch.save({"conv1.weight": _Payload(marker)}, cached)
    with pytest.raises(DawsolError, match="sha256"):
        build_model(ModelSettings("resnet18", "imagenet", True, 1.0), 4, CAM)
    # even with a name that matches its hash, weights_only refuses to unpickle the payload
    named = _named_by_hash(cached.parent, {"conv1.weight": _Payload(marker)})
    monkeypatch.setattr(pretrained, "imagenet_url", lambda enum: f"https://example.invalid/{named.name}")
    with pytest.raises(DawsolError, match="unreadable"):
        build_model(ModelSettings("resnet18", "imagenet", True, 1.0), 4, CAM)
    assert not marker.exists()


def test_imagenet_weights_download_from_a_server_and_a_bad_one_leaves_nothing(tmp_path: Path, monkeypatch):
    """A real HTTP download (a local server): the file lands in the cache only when its hash matches its name."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    served = tmp_path / "served"
    served.mkdir()
    torch.manual_seed(3)
    reference = torchvision.models.resnet18()
    good = _named_by_hash(served, reference.state_dict())
    bad = served / "resnet18-00000000.pth"
    bad.write_bytes(good.read_bytes())
    with serving(served) as (_, base):
        monkeypatch.setattr(pretrained, "imagenet_url", lambda enum: f"{base}/{bad.name}")
        with pytest.raises(DawsolError, match="cannot download"):
            build_model(ModelSettings("resnet18", "imagenet", True, 1.0), 4, CAM)
        cache = tmp_path / "torch" / "hub" / "checkpoints"
        assert not any(cache.iterdir())  # no partial or wrong file left behind
        monkeypatch.setattr(pretrained, "imagenet_url", lambda enum: f"{base}/{good.name}")
        model = build_model(ModelSettings("resnet18", "imagenet", True, 1.0), 4, CAM)
        assert torch.equal(model.trunk.conv1.weight, reference.conv1.weight)
        assert (cache / good.name).read_bytes() == good.read_bytes()


def test_width_only_for_resnet18_and_not_with_imagenet():
    with pytest.raises(DawsolError, match="only resnet18"):
        build_model(ModelSettings("resnet50", "none", True, 0.5), 4, CAM)
    with pytest.raises(DawsolError, match=r"width 1\.0"):
        build_model(ModelSettings("resnet18", "imagenet", True, 0.5), 4, CAM)


def test_inception_new_layers_are_initialised_as_the_official_trunk():
    """SPG_A3_1b / SPG_A3_2b: xavier-uniform weights and zero bias, as wsolevaluation's InceptionCam (not Kaiming)."""
    trunk = _model("inception_v3", False).trunk
    for layer in (trunk.SPG_A3_1b[0], trunk.SPG_A3_2b[0]):
        fan_in, fan_out = (layer.in_channels * 9, layer.out_channels * 9)
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        weight = layer.weight.detach()
        assert weight.abs().max() <= bound
        assert weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.01)  # uniform; Kaiming's is 1.3-1.6x
        assert not layer.bias.any()


def test_inception_drops_out_around_its_new_layers_only_without_adl():
    """The official CAM trunk drops out in training, the official ADL trunk does not (wsolevaluation's InceptionAdl)."""
    adl = WSOLSettings("adl", {"drop_rate": 0.0, "threshold": 0.9})  # ADL's importance map only: deterministic
    images = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    for wsol, dropped in ((CAM, True), (adl, False)):
        torch.manual_seed(0)
        model = build_model(ModelSettings("inception_v3", "none", False, 1.0), 3, wsol).train()
        outputs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            with torch.no_grad():
                outputs.append(model(images).features)
        assert (not torch.equal(*outputs)) == dropped, wsol.method
