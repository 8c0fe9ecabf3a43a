"""``dawsol prepare <dataset>``: build or download a dataset into ``<data.root>/<dataset>``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dawsol.config import deep_merge, load_params
from dawsol.errors import DawsolError

HELP = (
    "prepare a dataset: generate the synthetic benchmark, compose the photos benchmark from pinned Debian "
    "packages, or download / verify / lay out cub, ilsvrc, openimages"
)
DATASETS = ("synthetic", "photos", "cub", "ilsvrc", "openimages")
log = logging.getLogger(__name__)


def data_settings(params: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """``defaults.data`` merged with ``datasets.<dataset>.data`` ({} parts where absent)."""
    block = params.get("datasets", {}).get(dataset) or {}
    return deep_merge(params["defaults"].get("data", {}), block.get("data", {}))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="which dataset")
    parser.add_argument("--grid", type=Path, default=None, help="synthetic, photos: also write a sample grid PNG here")
    parser.add_argument(
        "--archive",
        type=Path,
        action="append",
        default=[],
        help="an already-downloaded archive, by its original file name (repeatable); "
        "else <data.root>/downloads/<name> is used or downloaded",
    )


def _prepare_synthetic(args: argparse.Namespace, params: Mapping[str, Any], dataset_dir: Path) -> None:
    from dawsol.data.synthetic import SyntheticConfig, prepare_synthetic, sample_grid

    config = SyntheticConfig.from_params(params["synthetic"])
    expected = data_settings(params, "synthetic").get("num_classes")
    if expected != config.num_classes:
        raise DawsolError(
            f"{args.params}: synthetic.num_classes={config.num_classes} but "
            f"datasets.synthetic.data.num_classes={expected}; make them equal"
        )
    made = prepare_synthetic(config, dataset_dir)
    print(f"{dataset_dir}: {'generated' if made else 'up to date'} (settings digest {config.digest()})")
    if args.grid is not None:
        sample_grid(dataset_dir, args.grid)
        print(f"sample grid: {args.grid}")


def _prepare_photos(args: argparse.Namespace, params: Mapping[str, Any], dataset_dir: Path) -> None:
    from dawsol.data.photos import PhotosConfig, prepare_photos
    from dawsol.data.synthetic import sample_grid

    config = PhotosConfig.from_params(params["photos"])
    expected = data_settings(params, "photos").get("num_classes")
    if expected != len(config.classes):
        raise DawsolError(
            f"{args.params}: photos.classes has {len(config.classes)} classes but "
            f"datasets.photos.data.num_classes={expected}; make them equal"
        )
    made = prepare_photos(config, dataset_dir.parent, args.archive)
    print(f"{dataset_dir}: {'composed' if made else 'up to date'} (settings digest {config.digest()})")
    if args.grid is not None:
        sample_grid(dataset_dir, args.grid)
        print(f"sample grid: {args.grid}")


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.profile)
    dataset_dir = Path(data_settings(params, args.dataset)["root"]) / args.dataset
    if args.dataset == "synthetic":
        _prepare_synthetic(args, params, dataset_dir)
        return 0
    if args.dataset == "photos":
        _prepare_photos(args, params, dataset_dir)
        return 0
    from dawsol.data.sources import prepare_dataset

    data = data_settings(params, args.dataset)
    made = prepare_dataset(args.dataset, Path(data["root"]), args.archive, num_classes=data.get("num_classes"))
    print(f"{dataset_dir}: {'prepared' if made else 'up to date'}")
    return 0
