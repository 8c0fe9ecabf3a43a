"""``dawsol localize``: a trained checkpoint's CAM of the predicted class and its boxes, drawn on your own images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from dawsol.atomic import atomic_write_bytes
from dawsol.cell_figures import encode_png, figure_threshold, tile
from dawsol.checkpoint import load_checkpoint, model_from_state, stored_settings
from dawsol.data.datasets import eval_transform
from dawsol.errors import DawsolError
from dawsol.evaluation import prepare_scoremap
from dawsol.runtime import select_device


@torch.inference_mode()
def localize(
    checkpoint: Path, images: Sequence[Path], out_dir: Path, device_name: str = "auto", threshold: float | None = None
) -> list[Path]:
    """Draw the CAM of the predicted class and its boxes on each image; returns the PNGs written.

    An unreadable image is an error before any PNG is written.
    """
    state = load_checkpoint(checkpoint)
    device = select_device(device_name)
    model = model_from_state(state, device)
    data = stored_settings(state).data
    if threshold is None:
        validated = [r["val"] for r in state["records"] if r.get("val")]
        threshold = figure_threshold(validated[-1]) if validated else 0.5
    if not 0 <= threshold < 1:
        raise DawsolError(f"--threshold {threshold}: a CAM threshold lies in [0, 1)")

    def read_rgb(image_path: Path) -> Image.Image:
        try:
            with Image.open(image_path) as handle:
                return handle.convert("RGB")
        except (OSError, ValueError):
            raise DawsolError(f"{image_path}: not a readable image") from None

    for image_path in images:  # every image is checked before anything is written
        read_rgb(image_path)
    transform = eval_transform(data.image_size)
    written = []
    for image_path in images:
        picture = read_rgb(image_path)
        tensor = transform(picture)[None].to(device)
        out = model(tensor)
        predicted = out.logits.argmax(1)
        cam = model.cams(out.features.float(), predicted)[0].double().cpu().numpy()
        scoremap = np.clip(cv2.resize(prepare_scoremap(cam, data.image_size), picture.size, cv2.INTER_CUBIC), 0, 1)
        caption = f"class {int(predicted[0])} p={torch.softmax(out.logits.float(), 1).max().item():.2f}"
        original = np.ascontiguousarray(np.asarray(picture)[:, :, ::-1])
        panel = tile(original, scoremap, np.zeros((0, 4), np.int64), threshold, caption)
        target = out_dir / f"{image_path.stem}_cam.png"
        atomic_write_bytes(target, encode_png(panel))
        written.append(target)
    return written
