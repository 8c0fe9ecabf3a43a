"""Small datasets the data tests build in tmp_path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from dawsol.data.metadata import SplitMetadata, write_split

WIDTH, HEIGHT = 20, 10


def digest_tree(root: Path, *, but: str | None = None) -> dict[str, str]:
    """The sha256 of every file below ``root`` by its relative path, but the files named ``but``."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != but
    }


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def tiny_masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two instance masks (one binary 255, one soft 128) and an ignore mask overlapping the first."""
    first = np.zeros((HEIGHT, WIDTH), np.uint8)
    first[2:7, 1:6] = 255
    second = np.zeros((HEIGHT, WIDTH), np.uint8)
    second[0:4, 10:13] = 128
    ignore = np.zeros((HEIGHT, WIDTH), np.uint8)
    ignore[1:8, 0:7] = 255
    return first, second, ignore


def make_dataset(root: Path) -> Path:
    """A tiny valid dataset: 2 classes x 2 noise images per split, 2 boxes each, masks on val/test."""
    rng = np.random.default_rng(0)
    first, second, ignore = tiny_masks()
    for split in ("train", "val", "test"):
        ids = [f"{split}/c{c}/{k}.png" for c in range(2) for k in range(2)]
        meta = SplitMetadata(image_ids=ids, labels={i: int(i.split("/")[1][1]) for i in ids})
        for i in ids:
            write_png(root / i, rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
            meta.sizes[i] = (WIDTH, HEIGHT)
            meta.boxes[i] = [(1, 2, 5, 6), (0, 0, WIDTH - 1, HEIGHT - 1)]
            if split != "train":
                stem = i[: -len(".png")]
                meta.masks[i] = [f"{stem}_m0.png", f"{stem}_m1.png"]
                meta.ignore_masks[i] = f"{stem}_ignore.png"
                for name, mask in zip((*meta.masks[i], meta.ignore_masks[i]), (first, second, ignore), strict=True):
                    write_png(root / name, mask)
        write_split(root / "metadata" / split, meta)
    return root
