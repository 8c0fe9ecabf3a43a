"""``dawsol import-checkpoint``: official DA-WSOL/BagCAMs and wsolevaluation files, built here from the names and
shapes of the checkpoints spec (sections 2-3), import strictly and give the official forward pass; bad files are
one-line errors."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml
from torch import Tensor, nn

from dawsol.checkpoints.format import (
    load_checkpoint,
    model_from_state,
    resumable_checkpoint,
    save_checkpoint,
    trained_checkpoint,
)
from dawsol.checkpoints.importer import import_checkpoint
from dawsol.cli import main
from dawsol.config import Settings, deep_merge, resolve
from dawsol.errors import DawsolError
from dawsol.layout import checkpoint_path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
SIDE = 64  # input side: the layouts are full size, the images need not be


def cell_settings(cell: str, **model: object) -> Settings:
    """The project's settings of ``cell``, with model settings replaced where given."""
    settings = resolve(cell, PARAMS)
    return dataclasses.replace(settings, model=dataclasses.replace(settings.model, **model)) if model else settings


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch project folder as the working directory (checkpoints go to its runs/)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, batch-norm statistics included, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Conv2d | nn.Linear):
                fan_in = sub.weight[0].numel()
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                if sub.bias is not None:
                    sub.bias.copy_(torch.randn(sub.bias.shape, generator=generator) * 0.1)
            elif isinstance(sub, nn.BatchNorm2d):
                c = sub.num_features
                sub.weight.copy_(torch.rand(c, generator=generator) * 0.5 + 0.25)
                sub.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                sub.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                sub.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                sub.num_batches_tracked.fill_(123)
    return module.eval()


def count(state: dict[str, Tensor]) -> tuple[int, int]:
    """(entries, parameters without the batch-norm buffers)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return len(state), sum(t.numel() for k, t in state.items() if not k.endswith(buffers))


# --- the official networks (spec sections 2.2, 2.3, 3.2), built from torchvision's modules -----------------------


class OfficialResNet50(nn.Module):
    """torchvision's ResNet50 without fc: layer4 at stride 1, layer3 too with the large map (spec 2.5)."""

    def __init__(self, large_feature_map: bool, seed: int) -> None:
        super().__init__()
        net = torchvision.models.resnet50()
        for name in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        for stage in ("layer4", "layer3") if large_feature_map else ("layer4",):
            block = getattr(self, stage)[0]
            block.conv2.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        randomise(self, seed)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class OfficialInceptionV3(nn.Module):
    """The SPG-style InceptionV3 extractor with the large map (spec 2.3 and 4.2)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"):
            setattr(self, name, getattr(net, name))
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            setattr(self, name, getattr(net, name))
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU())
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU())
        self.Conv2d_1a_3x3.conv.padding = (1, 1)
        for unit in (self.Mixed_6a.branch3x3, self.Mixed_6a.branch3x3dbl_3):
            unit.conv.stride, unit.conv.padding = (1, 1), (1, 1)
        randomise(self, seed)

    def forward(self, x: Tensor) -> Tensor:
        def pool(t: Tensor) -> Tensor:
            return F.max_pool2d(t, kernel_size=3, stride=2, padding=1, ceil_mode=True)

        x = pool(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # the large map: no pool after Mixed_5d
        b = self.Mixed_6a
        x = torch.cat(
            [
                b.branch3x3(x),
                b.branch3x3dbl_3(b.branch3x3dbl_2(b.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=1, padding=1),
            ],
            dim=1,
        )
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        return self.SPG_A3_2b(self.SPG_A3_1b(x))


class OfficialVGG16(nn.Module):
    """wsolevaluation's VGG16-CAM trunk: the removed pools absent from ``features`` (so later indices shift),
    ADL (identity in eval) taking an index after pool3, conv4_3's ReLU and conv5_3's ReLU; then conv6."""

    def __init__(self, large_feature_map: bool, adl: bool, seed: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, convs, pools = 3, 0, 0
        for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
            if width == "M":
                pools += 1
                if pools == 4 and large_feature_map:
                    continue
                layers.append(nn.MaxPool2d(2, 2))
                if pools == 3 and adl:
                    layers.append(nn.Identity())
                continue
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels, convs = width, convs + 1
            if convs in (10, 13) and adl:
                layers.append(nn.Identity())
        self.features = nn.Sequential(*layers)
        self.conv6 = nn.Conv2d(512, 1024, 3, padding=1)
        randomise(self, seed)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv6(self.features(x)))


def shift_adl_blocks(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ResNet50 state dict renamed as BagCAMs'/wsolevaluation's ADL model stores it: an ADL layer sits at index
    1 of layer3 and of layer4, so their blocks 1.. are stored one index higher (spec 2.7)."""
    renamed = {}
    for name, tensor in state.items():
        stage, _, rest = name.partition(".")
        if stage in ("layer3", "layer4"):
            block, _, tail = rest.partition(".")
            index = int(block)
            name = f"{stage}.{index + 1 if index else 0}.{tail}"
        renamed[name] = tensor
    return renamed


def sgd_state(params: list[nn.Parameter]) -> dict:
    """An SGD state dict of two groups, as the files carry one (the importer ignores it)."""
    half = len(params) // 2
    groups = [{"params": params[:half]}, {"params": params[half:], "lr": 0.01}]
    return torch.optim.SGD(groups, lr=0.001, momentum=0.9).state_dict()


def head(num_classes: int, dim: int, seed: int) -> tuple[Tensor, Tensor]:
    """A random classifier: weight [K, D] and bias [K]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_classes, dim, generator=generator) * 0.02, torch.randn(num_classes, generator=generator)


def da_file(path: Path, architecture: str, extractor: dict[str, Tensor], weight: Tensor, bias: Tensor) -> Path:
    """A DA-WSOL checkpoint file (spec 2.1): two state dicts, two optimizer states."""
    fc = nn.Conv2d(weight.shape[1], weight.shape[0], 1)
    torch.save(
        {
            "architecture": architecture,
            "epoch": 50,
            "state_dict_extractor": OrderedDict(extractor),
            "optimizer_extractor": sgd_state([nn.Parameter(torch.zeros(1)) for _ in range(4)]),
            "state_dict_classifier": OrderedDict([("fc.weight", weight[:, :, None, None]), ("fc.bias", bias)]),
            "optimizer_classifier": sgd_state(list(fc.parameters())),
        },
        path,
    )
    return path


def we_file(path: Path, architecture: str, state: dict[str, Tensor], epoch: int = 9) -> Path:
    """A wsolevaluation checkpoint file (spec 3.1)."""
    optimizer = sgd_state([nn.Parameter(torch.zeros(1)) for _ in range(4)])
    torch.save({"architecture": architecture, "epoch": epoch, "state_dict": state, "optimizer": optimizer}, path)
    return path


def check_forward(
    checkpoint: Path, reference: Callable[[Tensor], Tensor], weight: Tensor, bias: Tensor, seed: int = 0
) -> None:
    """The imported model's logits and CAMs equal the official network's features, pooled and scored by
    ``weight`` [K, D] and ``bias``."""
    state = load_checkpoint(checkpoint)
    model = model_from_state(state, torch.device("cpu"))
    images = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))
    labels = torch.tensor([0, weight.shape[0] - 1])
    with torch.no_grad():
        out = model(images)
        cams = model.cams(out.features, labels)
        features = reference(images)
    expected_logits = features.mean(dim=(2, 3)) @ weight.T + bias
    expected_cams = torch.einsum("bd,bdhw->bhw", weight[labels], features) + bias[labels, None, None]
    assert out.features.shape == features.shape
    for actual, expected in ((out.features, features), (out.logits, expected_logits), (cams, expected_cams)):
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


# --- imports that succeed ------------------------------------------------------------------------------------------


# the inner loop's one import of a full-size model (docs/testing.md); the other class counts and the small map are slow
@pytest.mark.parametrize(
    ("dataset", "num_classes", "large"),
    [
        ("cub", 200, True),
        pytest.param("ilsvrc", 1000, True, marks=pytest.mark.slow),
        pytest.param("openimages", 100, False, marks=pytest.mark.slow),
    ],
)
def test_da_wsol_resnet50_imports_with_the_official_forward_pass(workdir, dataset, num_classes, large):
    settings = cell_settings(f"{dataset}/resnet50/cam-mmd/seed4")
    assert (settings.data.num_classes, settings.model.large_feature_map) == (num_classes, large)
    net = OfficialResNet50(large, seed=1)
    extractor = net.state_dict()
    assert count(extractor) == (318, 23_508_032)
    assert next(iter(extractor)) == "conv1.weight" and "layer4.0.downsample.1.num_batches_tracked" in extractor
    weight, bias = head(num_classes, 2048, seed=2)
    source = da_file(workdir / "last_checkpoint.pth.tar", "resnet50", extractor, weight, bias)
    result = import_checkpoint(source, settings)
    assert result.checkpoint == checkpoint_path(settings.cell)
    assert (result.format, result.architecture, result.epoch) == ("da-wsol", "resnet50", 50)
    assert result.num_classes == num_classes
    assert result.large_feature_map is large
    assert result.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    check_forward(result.checkpoint, net, weight, bias)


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "num_classes"), [("cub", 200), ("ilsvrc", 1000), ("openimages", 100)])
def test_da_wsol_inception_v3_imports_with_the_official_forward_pass(workdir, dataset, num_classes):
    settings = cell_settings(f"{dataset}/inception_v3/cam-mmd/seed4")
    assert settings.data.num_classes == num_classes and settings.model.large_feature_map
    net = OfficialInceptionV3(seed=3)
    extractor = net.state_dict()
    assert count(extractor) == (424, 25_482_976)
    assert not any(k.startswith(("Mixed_7", "AuxLogits", "fc.")) for k in extractor)
    weight, bias = head(num_classes, 1024, seed=4)
    source = da_file(workdir / "last_checkpoint.pth.tar", "inception_v3", extractor, weight, bias)
    result = import_checkpoint(source, settings)
    assert (result.format, result.architecture, result.num_classes) == ("da-wsol", "inception_v3", num_classes)
    check_forward(result.checkpoint, net, weight, bias)


@pytest.mark.slow
@pytest.mark.parametrize("large", [False, True])
def test_wsolevaluation_vgg16_imports_at_both_map_sizes(workdir, large):
    settings = cell_settings("cub/vgg16/cam-none/seed0", large_feature_map=large)
    net = OfficialVGG16(large, adl=False, seed=5)
    weight, bias = head(200, 1024, seed=6)
    state = {**net.state_dict(), "fc.weight": weight, "fc.bias": bias}
    conv5 = (23, 25, 27) if large else (24, 26, 28)
    assert len(state) == 30 and all(f"features.{i}.weight" in state for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21))
    assert all(state[f"features.{i}.weight"].shape == (512, 512, 3, 3) for i in conv5)
    source = we_file(workdir / "last_checkpoint.pth.tar", "vgg16", state)
    result = import_checkpoint(source, settings)
    assert (result.format, result.architecture, result.epoch, result.large_feature_map) == (
        "wsolevaluation",
        "vgg16",
        9,
        large,
    )
    check_forward(result.checkpoint, net, weight, bias)


@pytest.mark.slow
def test_wsolevaluation_resnet50_imports_its_linear_classifier(workdir):
    settings = cell_settings("cub/resnet50/cam-none/seed0")
    net = OfficialResNet50(True, seed=7)
    weight, bias = head(200, 2048, seed=8)
    state = {**net.state_dict(), "fc.weight": weight, "fc.bias": bias}
    assert len(state) == 320
    result = import_checkpoint(we_file(workdir / "best_checkpoint.pth.tar", "resnet50", state), settings)
    check_forward(result.checkpoint, net, weight, bias)


@pytest.mark.slow
def test_wsolevaluation_inception_v3_imports_its_spg_a4_classifier(workdir):
    settings = cell_settings("cub/inception_v3/cam-none/seed0")
    net = OfficialInceptionV3(seed=9)
    weight, bias = head(200, 1024, seed=10)
    state = {**net.state_dict(), "SPG_A4.weight": weight[:, :, None, None], "SPG_A4.bias": bias}
    assert len(state) == 426
    result = import_checkpoint(we_file(workdir / "last_checkpoint.pth.tar", "inception_v3", state), settings)
    check_forward(result.checkpoint, net, weight, bias)


@pytest.mark.slow
@pytest.mark.parametrize("large", [False, True])
def test_wsolevaluation_adl_vgg16_indices_shift(workdir, large):
    settings = cell_settings("cub/vgg16/adl-none/seed0", large_feature_map=large)
    net = OfficialVGG16(large, adl=True, seed=11)
    weight, bias = head(200, 1024, seed=12)
    state = {**net.state_dict(), "fc.weight": weight, "fc.bias": bias}
    files = (18, 20, 22, 25, 27, 29) if large else (18, 20, 22, 26, 28, 30)
    assert all(f"features.{i}.weight" in state for i in files) and len(state) == 30
    result = import_checkpoint(we_file(workdir / "last_checkpoint.pth.tar", "vgg16", state), settings)
    check_forward(result.checkpoint, net, weight, bias)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["da-wsol", "wsolevaluation"])
def test_adl_resnet50_block_indices_shift_and_the_unused_extractor_fc_is_dropped(workdir, fmt):
    settings = cell_settings("cub/resnet50/adl-none/seed0")
    net = OfficialResNet50(True, seed=13)
    weight, bias = head(200, 2048, seed=14)
    extractor = shift_adl_blocks(net.state_dict())
    assert "layer3.6.conv1.weight" in extractor and "layer4.3.conv1.weight" in extractor
    assert "layer3.1.conv1.weight" not in extractor and "layer4.1.conv1.weight" not in extractor
    if fmt == "da-wsol":  # BagCAMs' resnet50_adl extractor carries an unused fc (320 entries)
        unused, _ = head(200, 2048, seed=15)
        extractor = {**extractor, "fc.weight": unused, "fc.bias": torch.zeros(200)}
        assert len(extractor) == 320
        source = da_file(workdir / "last_checkpoint.pth.tar", "resnet50", extractor, weight, bias)
    else:
        state = {**extractor, "fc.weight": weight, "fc.bias": bias}
        source = we_file(workdir / "last_checkpoint.pth.tar", "resnet50", state)
    result = import_checkpoint(source, settings)
    check_forward(result.checkpoint, net, weight, bias)


# --- bad files: one-line errors naming the file -------------------------------------------------------------------


@functools.cache
def cub_resnet50() -> tuple[OfficialResNet50, dict[str, Tensor], Tensor, Tensor]:
    """One official CUB ResNet50 (large map) and its classifier, shared by the tests below."""
    net = OfficialResNet50(True, seed=21)
    weight, bias = head(200, 2048, seed=22)
    return net, net.state_dict(), weight, bias


def refusal(source: Path, settings: Settings) -> str:
    """The one-line DawsolError of importing ``source``; nothing is written."""
    with pytest.raises(DawsolError) as caught:
        import_checkpoint(source, settings)
    message = str(caught.value)
    assert "\n" not in message and str(source) in message, message
    assert not checkpoint_path(settings.cell).exists()
    return message


def small_da_file(path: Path, architecture: str = "resnet50", num_classes: int = 200, ndim: int = 4) -> Path:
    """A DA-WSOL file whose classifier is all that matters (the checks before the mapping)."""
    weight = torch.zeros(num_classes, 2048, *(1,) * (ndim - 2))
    torch.save(
        {
            "architecture": architecture,
            "epoch": 50,
            "state_dict_extractor": {"conv1.weight": torch.zeros(64, 3, 7, 7)},
            "state_dict_classifier": {"fc.weight": weight, "fc.bias": torch.zeros(num_classes)},
        },
        path,
    )
    return path


CUB_RESNET50 = "cub/resnet50/cam-mmd/seed4"


def test_another_architecture_is_refused(workdir):
    message = refusal(small_da_file(workdir / "f.pth.tar"), cell_settings("cub/inception_v3/cam-mmd/seed4"))
    assert "checkpoint of resnet50, but cell cub/inception_v3/cam-mmd/seed4 uses backbone inception_v3" in message
    vgg = refusal(small_da_file(workdir / "f.pth.tar", architecture="vgg16"), cell_settings("cub/vgg16/cam-none/seed0"))
    assert "architecture 'vgg16' is not one a DA-WSOL/BagCAMs checkpoint has" in vgg


def test_another_class_count_is_refused(workdir):
    message = refusal(small_da_file(workdir / "f.pth.tar", num_classes=100), cell_settings(CUB_RESNET50))
    assert "K=100 classes" in message and "data.num_classes 200" in message


def test_a_2d_classifier_where_4d_is_expected_is_refused_and_the_reverse(workdir):
    settings = cell_settings(CUB_RESNET50)
    message = refusal(small_da_file(workdir / "f.pth.tar", ndim=2), settings)
    assert "fc.weight is 2-D [200, 2048]" in message and "is 4-D" in message
    state = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(200, 2048, 1, 1)}
    state["fc.bias"] = torch.zeros(200)
    message = refusal(we_file(workdir / "w.pth.tar", "resnet50", state), settings)
    assert "fc.weight is 4-D [200, 2048, 1, 1]" in message and "is 2-D" in message


def test_a_missing_key_is_refused(workdir):
    _, extractor, weight, bias = cub_resnet50()
    extractor = {k: v for k, v in extractor.items() if k != "layer2.1.conv2.weight"}
    message = refusal(da_file(workdir / "f.pth.tar", "resnet50", extractor, weight, bias), cell_settings(CUB_RESNET50))
    assert "1 missing (e.g. trunk.layer2.1.conv2.weight)" in message and "unexpected" not in message


def test_an_extra_key_and_a_wrong_shape_are_refused(workdir):
    _, extractor, weight, bias = cub_resnet50()
    extractor = {**extractor, "SPG_A3_1b.0.weight": torch.zeros(1), "conv1.weight": torch.zeros(64, 3, 5, 5)}
    message = refusal(da_file(workdir / "f.pth.tar", "resnet50", extractor, weight, bias), cell_settings(CUB_RESNET50))
    assert "1 unexpected (e.g. SPG_A3_1b.0.weight)" in message
    assert "1 of another shape (e.g. conv1.weight: [64, 3, 5, 5] in the file, [64, 3, 7, 7] in the model)" in message
    assert "missing" not in message


def test_a_vgg16_file_of_the_other_map_size_is_refused_with_a_hint(workdir):
    net = OfficialVGG16(True, adl=False, seed=23)
    weight, bias = head(200, 1024, seed=24)
    source = we_file(workdir / "f.pth.tar", "vgg16", {**net.state_dict(), "fc.weight": weight, "fc.bias": bias})
    message = refusal(source, cell_settings("cub/vgg16/cam-none/seed0"))  # the cell: large_feature_map false
    assert "6 missing (e.g. trunk.features.24.weight), 6 unexpected (e.g. features.23.weight)" in message
    assert "large_feature_map true: check the cell's wsol method and model.large_feature_map" in message


@pytest.mark.slow
def test_a_module_prefix_is_stripped_and_missing_batch_norm_counters_are_filled(workdir):
    net, extractor, weight, bias = cub_resnet50()
    prefixed = {f"module.{k}": v for k, v in extractor.items() if not k.endswith("num_batches_tracked")}
    source = workdir / "f.pth.tar"
    torch.save(
        {
            "architecture": "resnet50",
            "epoch": 50,
            "state_dict_extractor": prefixed,
            "state_dict_classifier": {"module.fc.weight": weight[:, :, None, None], "module.fc.bias": bias},
        },
        source,
    )
    result = import_checkpoint(source, cell_settings(CUB_RESNET50))
    model = load_checkpoint(result.checkpoint)["model"]
    counter = model["trunk.bn1.num_batches_tracked"]
    assert counter.dtype == torch.int64 and counter.shape == () and int(counter) == 0
    check_forward(result.checkpoint, net, weight, bias)


class Payload:
    """A class of this module: unpickling an instance needs this code."""


def test_a_pickle_that_needs_code_is_refused(workdir):
    source = workdir / "f.pth.tar"
    torch.save({"architecture": "resnet50", "state_dict": {}, "extra": Payload()}, source)
    message = refusal(source, cell_settings(CUB_RESNET50))
    assert "refused, not a plain weights file" in message and "Payload" in message


def test_a_dawsol_checkpoint_is_refused(workdir):
    source = workdir / "checkpoint.pt"
    torch.save({"format": 1, "cell": CUB_RESNET50, "model": {"classifier.bias": torch.zeros(200)}}, source)
    message = refusal(source, cell_settings(CUB_RESNET50))
    assert "already a dawsol checkpoint" in message and "runs/<cell>/checkpoint.pt" in message


def test_missing_corrupt_and_foreign_files_are_refused(workdir):
    settings = cell_settings(CUB_RESNET50)
    assert "no such checkpoint file" in refusal(workdir / "absent.pth.tar", settings)
    (workdir / "noise.pth.tar").write_bytes(bytes(range(256)) * 8)
    assert "not a torch checkpoint" in refusal(workdir / "noise.pth.tar", settings)
    torch.save({"a": torch.zeros(4)}, workdir / "whole.pt")
    (workdir / "half.pt").write_bytes((workdir / "whole.pt").read_bytes()[:200])
    assert "unreadable" in refusal(workdir / "half.pt", settings)
    torch.save([torch.zeros(1)], workdir / "list.pt")
    assert "holds a list, not a checkpoint dict" in refusal(workdir / "list.pt", settings)
    torch.save({"weights": torch.zeros(1), "epoch": 3}, workdir / "other.pt")
    assert "its top-level keys: epoch, weights" in refusal(workdir / "other.pt", settings)


# --- the command, end to end -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_command_imports_replaces_an_import_and_keeps_a_trained_checkpoint(workdir, capsys):
    cell, num_classes = "synthetic/resnet50/cam-mmd/seed0", 5
    params = deep_merge(PARAMS, {"pairs": {"synthetic/resnet50": {"data": {"num_classes": num_classes}}}})
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    net, extractor, _, _ = cub_resnet50()
    weight, bias = head(num_classes, 2048, seed=25)
    source = da_file(workdir / "dawsol_openimages.tar", "resnet50", extractor, weight, bias)
    argv = ["import-checkpoint", str(source), "--cell", cell, "--params", "params.yaml", "-q"]

    assert main(["import-checkpoint", str(source), "--inspect", "-q"]) == 0  # describes, writes nothing
    line = capsys.readouterr().out.strip()
    assert "DA-WSOL/BagCAMs checkpoint, resnet50, K=5 (fc.weight [5, 2048, 1, 1]), epoch 50, 318 trunk" in line
    assert not (workdir / "runs").exists()
    assert main(["import-checkpoint", str(source), "-q"]) == 1
    assert "give --cell CELL" in capsys.readouterr().err

    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    written = workdir / "runs" / cell / "checkpoint.pt"
    assert "\n" not in line and "DA-WSOL/BagCAMs checkpoint, resnet50, K=5, epoch 50" in line
    assert "large_feature_map true (the file does not record it" in line and str(checkpoint_path(cell)) in line
    state = load_checkpoint(written)
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    assert state["imported"] == {
        "source": str(source),
        "sha256": sha256,
        "format": "da-wsol",
        "architecture": "resnet50",
        "epoch": 50,
        "large_feature_map": True,
    }
    assert state["cell"] == cell and state["num_classes"] == num_classes and state["optimizer"] is None
    settings = resolve(cell, params)
    assert trained_checkpoint(settings)["imported"]["sha256"] == sha256  # evaluation accepts it
    check_forward(written, net, weight, bias)

    assert main(argv) == 0  # an earlier import may be replaced
    capsys.readouterr()
    with pytest.raises(DawsolError, match="not trained by dawsol; evaluate it, or delete it to train this cell"):
        resumable_checkpoint(settings)  # what dawsol train reads first: an imported cell is never trained

    trained = {**load_checkpoint(written), "imported": None, "epoch": 10, "epochs": 10, "batch": 0}
    save_checkpoint(written, {**trained, "optimizer": {}, "rng": {}, "stats": {}})  # as if dawsol trained it
    assert main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "holds a checkpoint dawsol trained (epoch 10); delete it first" in error
    assert load_checkpoint(written)["epoch"] == 10
