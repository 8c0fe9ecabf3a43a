"""torch Datasets and the protocol's transforms for training and evaluation.

Train: ``Resize((resize, resize))`` (aspect not kept) -> ``RandomCrop(image_size)`` ->
``RandomHorizontalFlip`` -> ImageNet normalisation; the randomness comes from torch's RNG,
so a seeded torch (and seeded DataLoader workers) gives the same batches.
Eval: ``Resize((image_size, image_size))`` -> normalisation; ground-truth boxes and masks are
brought to the same ``image_size`` x ``image_size`` grid (see ``dawsol.data.groundtruth``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from dawsol.components.backbones import IMAGENET_NORMALIZATION, Normalization
from dawsol.data.groundtruth import load_mask, rescale_boxes
from dawsol.data.metadata import IMAGE_ERRORS, IMAGE_SIZES, SplitMetadata, read_split, to_rgb
from dawsol.errors import DawsolError


def train_transform(
    image_size: int, resize_size: int, normalization: Normalization = IMAGENET_NORMALIZATION
) -> transforms.Compose:
    """The protocol's training transform, normalised as the backbone expects."""
    return transforms.Compose(
        [
            transforms.Resize((resize_size, resize_size)),
            transforms.RandomCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(*normalization),
        ]
    )


def eval_transform(image_size: int, normalization: Normalization = IMAGENET_NORMALIZATION) -> transforms.Compose:
    """The protocol's evaluation transform (no crop: the whole image, squashed), normalised as the backbone expects."""
    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize(*normalization),
        ]
    )


def to_bgr(image: torch.Tensor, normalization: Normalization = IMAGENET_NORMALIZATION) -> np.ndarray:
    """The inverse of the transforms' normalisation: a 3 x S x S tensor back to a uint8 BGR picture."""
    mean = torch.tensor(normalization[0]).view(3, 1, 1)
    std = torch.tensor(normalization[1]).view(3, 1, 1)
    rgb = (image.float().cpu() * std + mean).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(rgb[:, :, ::-1])


class ItemError(DawsolError):
    """A DawsolError of one item (an unreadable image, a mask or size that does not fit).

    It keeps its one line when a DataLoader worker raised it: torch re-raises a worker's
    exception as ``type(exc)(its own message)``, "Caught ... in DataLoader worker process N"
    followed by the worker's whole traceback; this class keeps only the original's last line.
    """

    def __init__(self, message: str) -> None:
        name = type(self).__name__
        lines = message.strip().splitlines()
        if len(lines) > 1 and lines[0].startswith(f"Caught {name} in DataLoader worker"):
            message = lines[-1].split(f"{name}: ", 1)[-1]
        super().__init__(message)


@contextlib.contextmanager
def _one_line_from_workers() -> Iterator[None]:
    """Raise a DawsolError of loading one item as an ``ItemError``, so it stays one line from a worker."""
    try:
        yield
    except ItemError:
        raise
    except DawsolError as exc:
        raise ItemError(str(exc)) from None


def load_image(dataset_dir: Path, image_id: str) -> Image.Image:
    """The RGB image ``dataset_dir / image_id``; DawsolError naming id and path if unreadable."""
    path = Path(dataset_dir) / image_id
    try:
        with Image.open(path) as image:
            return to_rgb(image, path)
    except IMAGE_ERRORS as exc:
        reason = "missing" if not path.exists() else f"unreadable ({' '.join(str(exc).split())})"
        raise DawsolError(f"image {image_id}: {path} is {reason}; re-run `dawsol prepare`") from None


def read_dataset_split(dataset_dir: str | Path, split: str) -> SplitMetadata:
    """``read_split`` of ``<dataset_dir>/metadata/<split>``, with a clear error if absent."""
    split_dir = Path(dataset_dir) / "metadata" / split
    if not split_dir.is_dir():
        raise DawsolError(f"{split_dir}: no such split; run `dawsol prepare <dataset>` first")
    return read_split(split_dir)


def sample_per_class(image_ids: Sequence[str], labels: Mapping[str, int], k: int, seed: int) -> list[str]:
    """``k`` ids per class drawn without replacement (wsolevaluation's ``num_val_sample_per_class``).

    ``k == 0`` keeps every id. Classes are visited in ascending label order and each draw is
    ``np.random.choice(indices, k, replace=False)`` from a RandomState seeded with ``seed``.
    """
    if k == 0:
        return list(image_ids)
    rng = np.random.RandomState(seed)
    ids = np.array(image_ids)
    ids_labels = np.array([labels[i] for i in image_ids])
    sampled: list[str] = []
    for label in np.unique(ids_labels):
        indices = np.where(ids_labels == label)[0]
        if len(indices) < k:
            raise DawsolError(
                f"data.num_val_sample_per_class={k} but class {label} has only {len(indices)} images; "
                f"lower it to at most {len(indices)} (or 0 for all)"
            )
        sampled += ids[rng.choice(indices, k, replace=False)].tolist()
    return sampled


class TrainDataset(Dataset):
    """Weakly supervised training items ``(image [3,S,S] float tensor, label int)``."""

    def __init__(
        self,
        dataset_dir: str | Path,
        split: str = "train",
        *,
        image_size: int,
        resize_size: int,
        proxy: bool = False,
        normalization: Normalization = IMAGENET_NORMALIZATION,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        meta = read_dataset_split(self.dataset_dir, split)
        if proxy and meta.proxy_ids is None:
            raise DawsolError(f"{self.dataset_dir}/metadata/{split}: no image_ids_proxy.txt for proxy training")
        self.image_ids: list[str] = list(meta.proxy_ids if proxy else meta.image_ids)
        self.labels: list[int] = [meta.labels[i] for i in self.image_ids]
        self.transform = train_transform(image_size, resize_size, normalization)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with _one_line_from_workers():
            image = load_image(self.dataset_dir, self.image_ids[index])
        return self.transform(image), self.labels[index]


class EvalDataset(Dataset):
    """Evaluation items: dicts with ``image``, ``label``, ``image_id``, ``boxes`` and ``mask``.

    ``boxes`` is a K x 4 int64 array at ``image_size`` (0 x 4 without boxes), ``mask`` an
    ``image_size`` x ``image_size`` uint8 array (1/0/255) or None. Masks resolve against
    ``mask_root`` (default: the dataset folder). ``image_ids`` restricts and orders the items
    (e.g. ``sample_per_class``); by default every id of the split in file order.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        split: str,
        image_size: int,
        mask_root: str | Path | None = None,
        *,
        image_ids: Sequence[str] | None = None,
        normalization: Normalization = IMAGENET_NORMALIZATION,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.mask_root = Path(mask_root) if mask_root is not None else self.dataset_dir
        self.meta = read_dataset_split(self.dataset_dir, split)
        self.split_dir = self.dataset_dir / "metadata" / split
        self.image_ids: list[str] = list(self.meta.image_ids if image_ids is None else image_ids)
        unknown = [i for i in self.image_ids if i not in self.meta.labels]
        if unknown:
            raise DawsolError(f"{self.dataset_dir}/metadata/{split}: no label for {unknown[0]}")
        self.image_size = image_size
        self.normalization = normalization
        self.transform = eval_transform(image_size, normalization)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with _one_line_from_workers():
            return self._item(self.image_ids[index])

    def _item(self, image_id: str) -> dict[str, Any]:
        image = load_image(self.dataset_dir, image_id)
        boxes = self.meta.boxes.get(image_id, [])
        size = self.meta.sizes.get(image_id, image.size)
        if size != image.size:
            raise DawsolError(
                f"image {image_id}: {self.dataset_dir / image_id} is {image.size[0]}x{image.size[1]} but "
                f"{self.split_dir / IMAGE_SIZES} says {size[0]}x{size[1]}; re-run `dawsol prepare` "
                f"or fix the file (`dawsol validate {self.dataset_dir}` lists every such image)"
            )
        mask = None
        if image_id in self.meta.masks:
            ignore = self.meta.ignore_masks.get(image_id)
            mask = load_mask(
                [self.mask_root / p for p in self.meta.masks[image_id]],
                self.mask_root / ignore if ignore else None,
                self.image_size,
                original_size=image.size,
            )
        return {
            "image": self.transform(image),
            "label": self.meta.labels[image_id],
            "image_id": image_id,
            "boxes": rescale_boxes(boxes, size, self.image_size),
            "mask": mask,
        }


def collate_eval(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch EvalDataset items: ``image`` stacked, ``label`` a long tensor, the rest lists."""
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "label": torch.tensor([item["label"] for item in batch], dtype=torch.long),
        "image_id": [item["image_id"] for item in batch],
        "boxes": [item["boxes"] for item in batch],
        "mask": [item["mask"] for item in batch],
    }
