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


ASPECT_TOLERANCE = 0.01  # relative: a mask stored at another resolution keeps its image's shape


def mask_fits(mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """Whether a mask of ``mask_size`` (width, height) lies on an image of ``image_size``: the same size, or a
    uniform rescaling of it (the protocol resizes masks and images to the evaluation size independently)."""
    if tuple(mask_size) == tuple(image_size):
        return True
    (mw, mh), (iw, ih) = mask_size, image_size
    return abs((mw / mh) / (iw / ih) - 1) <= ASPECT_TOLERANCE


def _read_binary(path: Path, size: int, original_size: tuple[int, int] | None) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DawsolError(f"{path}: mask missing or unreadable (re-run `dawsol prepare` or check data.mask_root)")
    height, width = image.shape
    if original_size is not None and not mask_fits((width, height), original_size):
        raise DawsolError(
            f"{path}: mask is {width}x{height} but its image is {original_size[0]}x{original_size[1]} "
            "(re-run `dawsol prepare` or check data.mask_root)"
        )
    resized = cv2.resize(image.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
    return resized > 0.5


def load_mask(
    mask_paths: Sequence[Path], ignore_path: Path | None, size: int, *, original_size: tuple[int, int] | None = None
) -> np.ndarray:
    """The ground-truth mask at ``size`` x ``size``: uint8 1 foreground, 0 background, 255 ignore.

    With ``original_size`` (the image's width, height), a mask of another shape (``mask_fits``) is a DawsolError.
    """
    if not mask_paths:
        raise DawsolError("load_mask needs at least one instance mask path")
    foreground = np.zeros((size, size), dtype=bool)
    for path in mask_paths:
        foreground |= _read_binary(Path(path), size, original_size)
    result = foreground.astype(np.uint8)
    if ignore_path is not None:
        ignore = _read_binary(Path(ignore_path), size, original_size) & ~foreground
        result[ignore] = IGNORE
    return result
