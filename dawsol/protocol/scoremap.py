"""Score maps as the protocol evaluates them: float64, resized bicubically, min-max normalised."""

from __future__ import annotations

import cv2
import numpy as np


def cam_thresholds(cam_curve_interval: float) -> list[float]:
    """The CAM thresholds ``list(np.arange(0, 1, interval))``, float error included (1.0 excluded)."""
    if not 0 < cam_curve_interval < 1:
        raise ValueError(f"cam_curve_interval must be in (0, 1), got {cam_curve_interval}")
    return [float(t) for t in np.arange(0, 1, cam_curve_interval)]


def normalize_scoremap(cam: np.ndarray) -> np.ndarray:
    """Min-max normalise a float map into a new array: all zeros if it has a NaN or is constant.

    The minimum is subtracted first, then the map is divided by its new maximum, as the protocol does.
    """
    cam = np.array(cam, dtype=np.float64)
    if np.isnan(cam).any() or cam.min() == cam.max():
        return np.zeros_like(cam)
    cam -= cam.min()
    cam /= cam.max()
    return cam


def prepare_scoremap(cam: np.ndarray, size: int) -> np.ndarray:
    """A CAM of any size as the evaluated score map: float64, bicubic resize to ``size`` x ``size``, normalised."""
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise ValueError(f"a CAM must be a 2-D array, got shape {cam.shape}")
    resized = cv2.resize(cam, (size, size), interpolation=cv2.INTER_CUBIC)
    return normalize_scoremap(resized)


def check_scoremap(scoremap: np.ndarray) -> None:
    """Raise ValueError unless ``scoremap`` is a 2-D float64 array without NaN, with values in [0, 1]."""
    if not isinstance(scoremap, np.ndarray) or scoremap.dtype != np.float64:
        raise ValueError(f"a score map must be a float64 numpy array, got {type(scoremap).__name__}")
    if scoremap.ndim != 2:
        raise ValueError(f"a score map must be 2-D, got shape {scoremap.shape}")
    if np.isnan(scoremap).any():
        raise ValueError("a score map must not contain NaN")
    if scoremap.size and (scoremap.min() < 0 or scoremap.max() > 1):
        raise ValueError(f"score map values must lie in [0, 1], got [{scoremap.min()}, {scoremap.max()}]")
