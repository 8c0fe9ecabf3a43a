"""The protocol's ground truth at the evaluation size: box rescaling and mask loading.

Both follow wsolevaluation exactly: boxes are rescaled with ``int(x * size / w)``
(truncation), masks are read as grayscale, resized with nearest-neighbour interpolation,
binarised with ``> 0.5`` (any non-zero pixel of a 0-255 PNG is foreground) and OR-ed over
instances; the ignore region is the ignore PNG's ``> 0.5`` pixels that are not foreground.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from dawsol.errors import DawsolError

FOREGROUND = 1
BACKGROUND = 0
IGNORE = 255


def rescale_boxes(boxes: Sequence[Sequence[int]] | np.ndarray, original_size: tuple[int, int], size: int) -> np.ndarray:
    """Boxes (x0, y0, x1, y1) in an image of ``original_size`` (width, height), at ``size`` x ``size``.

    Returns a K x 4 int64 array (0 x 4 for no boxes); each coordinate is ``int(x * size / w)``.
    """
    array = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    width, height = original_size
    # int(x * size / w): multiply first, then divide, then truncate, as the reference does
    denom = np.array([width, height, width, height], dtype=np.int64)
    return ((array * size) / denom).astype(np.int64)


def _read_binary(path: Path, size: int) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DawsolError(f"{path}: mask missing or unreadable (re-run `dawsol prepare` or check data.mask_root)")
    resized = cv2.resize(image.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
    return resized > 0.5


def load_mask(mask_paths: Sequence[Path], ignore_path: Path | None, size: int) -> np.ndarray:
    """The ground-truth mask at ``size`` x ``size``: uint8 1 foreground, 0 background, 255 ignore."""
    if not mask_paths:
        raise DawsolError("load_mask needs at least one instance mask path")
    foreground = np.zeros((size, size), dtype=bool)
    for path in mask_paths:
        foreground |= _read_binary(Path(path), size)
    result = foreground.astype(np.uint8)
    if ignore_path is not None:
        ignore = _read_binary(Path(ignore_path), size) & ~foreground
        result[ignore] = IGNORE
    return result
