"""Settings resolution: merge order, method pruning, grid, and every error case."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dawsol.config import (
    Cell,
    apply_overrides,
    deep_merge,
    grid_cells,
    load_params,
    parse_cell,
    parse_override,
    resolve,
)
from dawsol.errors import DawsolError


def _write(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _edit(params_copy: Path, mutate) -> Path:
    params = yaml.safe_load(params_copy.read_text())
    mutate(params)
    return _write(params_copy, params)


def test_parse_cell_round_trip():
    cell = parse_cell("synthetic/resnet18/cam-mmd/seed3")
    assert cell == Cell("synthetic", "resnet18", "cam", "mmd", 3)
    assert cell.name == "synthetic/resnet18/cam-mmd/seed3"
    assert cell.method == "cam-mmd"


@pytest.mark.parametrize("bad", ["synthetic/resnet18/cam/seed0", "synthetic/resnet18/cam-mmd", "a/b/c-d/seedx", ""])
def test_parse_cell_rejects_malformed(bad):
    with pytest.raises(DawsolError, match="malformed cell"):
        parse_cell(bad)


def test_merge_order_defaults_dataset_backbone_pair_cell(params_copy):
    cell = "synthetic/resnet18/cam-mmd/seed0"

    def mutate(p):
        p["defaults"]["train"]["lr"] = 1.0
        p["defaults"]["train"]["weight_decay"] = 1.0
        p["defaults"]["train"]["momentum"] = 0.1
        p["defaults"]["train"]["eval_every"] = 9
        p["datasets"]["synthetic"]["train"] = {"lr": 2.0, "weight_decay": 2.0, "momentum": 0.2}
        p["backbones"]["resnet18"]["train"] = {"weight_decay": 3.0, "momentum": 0.3}
        p["pairs"] = {"synthetic/resnet18": {"train": {"momentum": 0.4, "batch_size": 7}}}
        p["cells"] = {cell: {"train": {"batch_size": 5}}}

    path = _edit(params_copy, mutate)
    settings = resolve(cell, load_params(path), path)
    assert settings.train.eval_every == 9  # defaults only
    assert settings.train.lr == 2.0  # dataset beats defaults
    assert settings.train.weight_decay == 3.0  # backbone beats dataset
    assert settings.train.momentum == 0.4  # pair beats backbone
    assert settings.train.batch_size == 5  # cell beats pair
    other = resolve("synthetic/resnet18/cam-mmd/seed1", load_params(path), path)
    assert other.train.batch_size == 7  # the cell override is for seed0 only


def test_method_blocks_are_pruned(params_copy):
    params = load_params(params_copy)
    baseline = resolve("synthetic/resnet18/cam-none/seed0", params, params_copy)
    mmd = resolve("synthetic/resnet18/cam-mmd/seed0", params, params_copy)
    dann = resolve("synthetic/resnet18/cam-dann/seed0", params, params_copy)
    has = resolve("synthetic/resnet18/has-none/seed0", params, params_copy)
    assert baseline.da is None
    assert mmd.da.loss == "mmd" and dann.da.loss == "dann"
    assert dict(has.wsol.options) == {"grid_size": 16, "drop_rate": 0.5}
    assert dict(baseline.wsol.options) == {}

    def bump_mmd(p):
        p["defaults"]["da"]["mmd"]["lambda1"] = 0.9

    path = _edit(params_copy, bump_mmd)
    changed = load_params(path)
    assert resolve("synthetic/resnet18/cam-mmd/seed0", changed, path).digest() != mmd.digest()
    assert resolve("synthetic/resnet18/cam-dann/seed0", changed, path).digest() == dann.digest()
    assert resolve("synthetic/resnet18/cam-none/seed0", changed, path).digest() == baseline.digest()


def test_da_method_block_overrides_common_keys(params_copy):
    def mutate(p):
        p["defaults"]["da"]["mmd_notsa"] = {"loss": "mmd", "lambda1": 0.3, "lambda2": 0.0, "use_tsa": False}

    path = _edit(params_copy, mutate)
    settings = resolve("synthetic/resnet18/cam-mmd_notsa/seed0", load_params(path), path)
    assert settings.da.use_tsa is False and settings.da.lambda2 == 0.0
    assert settings.da.start_epoch == 1  # the dataset's common da value still applies


def test_pair_settings_match_official_scripts(params_copy):
    params = load_params(params_copy)
    cub_inc = resolve("cub/inception_v3/cam-mmd/seed4", params, params_copy)
    assert (cub_inc.train.lr, cub_inc.train.weight_decay, cub_inc.da.start_epoch) == (0.002, 0.0005, 5)
    assert (cub_inc.da.lambda1, cub_inc.da.lambda2) == (1.4, 4.0)
    oi_res = resolve("openimages/resnet50/cam-mmd/seed4", params, params_copy)
    assert oi_res.model.large_feature_map is False
    assert (oi_res.train.epochs, oi_res.train.lr_decay_frequency) == (10, 3)


def test_settings_are_frozen(params_copy):
    settings = resolve("synthetic/resnet18/cam-mmd/seed0", load_params(params_copy), params_copy)
    with pytest.raises(AttributeError):
        settings.train.lr = 5.0  # type: ignore[misc]
    flat = settings.flat()
    assert flat["train.lr"] == settings.train.lr and flat["cell"] == settings.cell.name


def test_grid_cells_and_exclusions(params_copy):
    def mutate(p):
        p["grid"]["exclude"] = ["*/cam-dann/*", "*/seed2"]

    path = _edit(params_copy, mutate)
    names = [c.name for c in grid_cells(load_params(path), path)]
    assert names == [
        "synthetic/efficientnet_lite0/cam-none/seed0",
        "synthetic/efficientnet_lite0/cam-none/seed1",
        "synthetic/efficientnet_lite0/cam-mmd/seed0",
        "synthetic/efficientnet_lite0/cam-mmd/seed1",
    ]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["defaults"]["train"].update(lrr=0.1), r"defaults\.train\.lrr: unknown key"),
        (lambda p: p["defaults"]["train"].update(epochs="ten"), r"defaults\.train\.epochs: 'ten' is not of type"),
        (lambda p: p["datasets"]["synthetic"]["data"].update(image_size=-4), r"datasets\.synthetic\.data\.image_size"),
        (lambda p: p.update(extra_section={}), r"extra_section: unknown key"),
        (lambda p: p["grid"].update(wsol=["cam", "spgx"]), r"grid\.wsol\.1"),
        (lambda p: p["defaults"]["da"]["mmd"].update(loss="wasserstein"), r"defaults\.da\.mmd\.loss"),
        (lambda p: p["backbones"].update(alexnet={}), r"backbones: 'alexnet' is not one of"),
        (lambda p: p["defaults"]["train"].pop("momentum"), r"train\.momentum is missing"),
    ],
)
def test_bad_params_name_key_and_file(params_copy, mutate, expected):
    path = _edit(params_copy, mutate)
    with pytest.raises(DawsolError, match=expected) as info:
        resolve("synthetic/resnet18/cam-mmd/seed0", load_params(path), path)
    assert "\n" not in str(info.value)
    if "missing" not in expected:
        assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("mnist/resnet18/cam-mmd/seed0", "unknown dataset 'mnist'"),
        ("synthetic/resnet101/cam-mmd/seed0", "unknown backbone 'resnet101'"),
        ("synthetic/resnet18/gradcut-mmd/seed0", "unknown WSOL method 'gradcut'"),
        ("synthetic/resnet18/cam-coral/seed0", "unknown DA method 'coral'"),
    ],
)
def test_unknown_cell_parts(params_copy, cell, expected):
    with pytest.raises(DawsolError, match=expected):
        resolve(cell, load_params(params_copy), params_copy)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["pairs"].update({"cub/resnet5": {}}), r"pairs\.\"cub/resnet5\" names an unknown backbone"),
        (lambda p: p["pairs"].update({"cu/resnet50": {}}), r'pairs\."cu/resnet50" names an unknown dataset \'cu\''),
        (
            lambda p: p.setdefault("cells", {}).update({"synthetic/resnet18/cam-xyz/seed0": {}}),
            r'cells\."synthetic/resnet18/cam-xyz/seed0": unknown DA method \'xyz\'',
        ),
        (
            lambda p: p["profiles"]["paper"].setdefault("cells", {}).update({"cub/resnet50/gradcut-none/seed0": {}}),
            r"\(profile paper\): cells\.\"cub/resnet50/gradcut-none/seed0\": unknown WSOL method 'gradcut'",
        ),
    ],
    ids=["pair-backbone", "pair-dataset", "cell-da", "profile-cell"],
)
def test_override_keys_that_match_nothing_are_errors(params_copy, mutate, expected):
    """A typo'd pairs or cells key would silently drop its overrides; it names the key and the file."""
    path = _edit(params_copy, mutate)
    with pytest.raises(DawsolError, match=expected) as info:
        load_params(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(DawsolError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("defaults: [unclosed\n")
    with pytest.raises(DawsolError, match="not valid YAML"):
        load_params(broken)


def test_profiles_overlay(params_copy):
    def mutate(p):
        p["profiles"] = {
            "quick": {
                "grid": {
                    "datasets": ["synthetic"],
                    "backbones": ["resnet18"],
                    "wsol": ["cam"],
                    "da": ["none"],
                    "seeds": [0],
                }
            }
        }

    path = _edit(params_copy, mutate)
    assert len(grid_cells(load_params(path, "quick"), path)) == 1
    with pytest.raises(DawsolError, match="unknown profile 'nope'"):
        load_params(path, "nope")


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}}
    merged = deep_merge(base, {"a": {"b": 5}})
    assert merged == {"a": {"b": 5, "c": 2}} and base == {"a": {"b": 1, "c": 2}}


def test_paper_profile_grid(params_copy):
    params = load_params(params_copy, "paper")
    cells = [c.name for c in grid_cells(params, params_copy)]
    assert len(cells) == len(set(cells)) == 48
    main = [c for c in cells if "/cam-" in c and c.split("/")[2].split("-")[1] in ("none", "mmd", "dann")]
    assert len(main) == 27  # 3 datasets x 3 backbones x none/MMD/DANN
    assert "cub/resnet50/adl-dann/seed4" in cells and "ilsvrc/resnet50/adl-dann/seed4" not in cells
    assert "cub/resnet50/cam-lu_only/seed4" in cells
    ilsvrc = resolve("ilsvrc/resnet50/cam-mmd/seed4", params, params_copy)
    assert (ilsvrc.train.lr, ilsvrc.da.lambda2, ilsvrc.model.pretrained) == (0.00001, 3.0, "imagenet")


def test_grid_extra_must_name_known_cells(params_copy):
    def mutate(p):
        p["grid"]["extra"] = ["synthetic/resnet18/cam-nosuch/seed0"]

    path = _edit(params_copy, mutate)
    with pytest.raises(DawsolError, match="unknown DA method 'nosuch'"):
        grid_cells(load_params(path), path)


def test_imports_must_name_cells_of_the_grid(params_copy):
    from dawsol.config import grid_imports
    from dawsol.errors import DawsolError

    params = load_params(params_copy)
    params["imports"] = {"synthetic/efficientnet_lite0/cam-mmd/seed0": "released/model.pth.tar"}
    assert grid_imports(params, params_copy) == {
        parse_cell("synthetic/efficientnet_lite0/cam-mmd/seed0"): Path("released/model.pth.tar")
    }
    params["imports"] = {"synthetic/efficientnet_lite0/cam-mmd/seed9": "released/model.pth.tar"}
    with pytest.raises(
        DawsolError, match=r'imports."synthetic/efficientnet_lite0/cam-mmd/seed9" is not a cell of the grid'
    ):
        grid_imports(params, params_copy)


def test_a_profile_replaces_the_base_imports_and_train_refuses_an_imported_cell(params_copy, capsys):
    import yaml

    from dawsol.cli import main
    from dawsol.config import grid_imports

    params = yaml.safe_load(params_copy.read_text())
    params["imports"] = {"synthetic/efficientnet_lite0/cam-mmd/seed0": "mine.pth.tar"}
    params_copy.write_text(yaml.safe_dump(params, sort_keys=False))
    released = load_params(params_copy, "released")
    assert all(str(p).startswith("checkpoints/released/") for p in grid_imports(released, params_copy).values())
    assert (
        main(["train", "synthetic/efficientnet_lite0/cam-mmd/seed0", "--params", str(params_copy), "--no-tracking"])
        == 1
    )
    error = capsys.readouterr().err
    assert "is imported" in error and "dawsol import-checkpoint mine.pth.tar" in error and error.count("\n") == 1


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["grid"].update(seeds=[10**22]), "seeds"),
        (lambda p: p["synthetic"].update(seed=2**32), "synthetic.seed"),
        (lambda p: p["datasets"]["synthetic"]["data"].update(image_size=128, resize_size=100), "resize_size"),
    ],
)
def test_seeds_and_sizes_that_would_fail_later_fail_now_in_one_line(params_copy, mutate, expected):
    path = _edit(params_copy, mutate)
    with pytest.raises(DawsolError, match=expected) as error:
        params = load_params(path)
        for cell in grid_cells(params, path):
            resolve(cell, params, path)
    assert "\n" not in str(error.value)
    with pytest.raises(DawsolError, match="2\\^32"):
        parse_cell("synthetic/resnet18/cam-mmd/seed" + "9" * 23)


@pytest.mark.parametrize(
    ("item", "tree"),
    [
        ("train.epochs=2", {"train": {"epochs": 2}}),
        ("train.lr=1e-3", {"train": {"lr": 0.001}}),  # YAML 1.1 would read a string
        ("train.bf16=true", {"train": {"bf16": True}}),
        ("eval.iou_thresholds=[30, 50]", {"eval": {"iou_thresholds": [30, 50]}}),
        ("data.mask_root=null", {"data": {"mask_root": None}}),
        ("model.pretrained=runs/a=b/checkpoint.pt", {"model": {"pretrained": "runs/a=b/checkpoint.pt"}}),
    ],
)
def test_an_override_is_typed_as_yaml_types_it(item, tree):
    assert parse_override(item) == tree


def test_overrides_resolve_exactly_as_the_cells_block(params_copy):
    cell = "synthetic/resnet18/cam-mmd/seed0"
    overrides = ["train.epochs=2", "da.mmd.lambda1=0.7", "eval.iou_thresholds=[30,50]", "train.epochs=4"]
    params = load_params(params_copy)
    overridden = resolve(cell, apply_overrides(params, cell, overrides), params_copy)
    assert (overridden.train.epochs, overridden.da.lambda1, overridden.eval.iou_thresholds) == (4, 0.7, (30, 50))
    written = _edit(
        params_copy,
        lambda p: p.setdefault("cells", {}).update(
            {cell: {"train": {"epochs": 4}, "da": {"mmd": {"lambda1": 0.7}}, "eval": {"iou_thresholds": [30, 50]}}}
        ),
    )
    assert resolve(cell, load_params(written), written) == overridden
    assert overridden.digest() != resolve(cell, params, params_copy).digest()
    other = resolve("synthetic/resnet18/cam-mmd/seed1", apply_overrides(params, cell, overrides), params_copy)
    assert other == resolve("synthetic/resnet18/cam-mmd/seed1", params, params_copy)  # only that cell changes
    assert apply_overrides(params, cell, []) == params


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.epoch=2", "override train.epoch=2: train.epoch: unknown key"),
        ("train.epochs=0", "override train.epochs=0: train.epochs: 0 is less than the minimum of 1"),
        ("grid.seeds=[1]", "override grid.seeds=[1]: grid: unknown key"),
        ("train.epochs", "expected KEY=VALUE"),
        ("train..epochs=2", "expected KEY=VALUE"),
        ("train.epochs=[1", "not valid YAML"),
        ("da.dann.lambda1=1", "da.dann does not apply to synthetic/resnet18/cam-mmd/seed0 (its da method is mmd)"),
        ("wsol.has.drop_rate=0.5", "wsol.has does not apply"),
    ],
)
def test_a_wrong_override_is_the_params_error_naming_it(params_copy, item, message):
    params = load_params(params_copy)
    with pytest.raises(DawsolError) as error:
        apply_overrides(params, "synthetic/resnet18/cam-mmd/seed0", [item])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_registered_backbone_needs_no_block_of_its_own():
    params = load_params()
    del params["backbones"]["vgg16"]
    settings = resolve("synthetic/vgg16/cam-mmd/seed0", params)
    assert settings.model.backbone == "vgg16"
