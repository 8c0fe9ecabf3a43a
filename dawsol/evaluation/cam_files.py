"""``dawsol cams``: one extractor's maps of a checkpoint on one split, as the protocol's ``<image_id>.npy`` files.

Each file is the score map the protocol evaluates (docs/posthoc.md section 5: the extractor's own
chain to ``size`` x ``size``, ``size`` the cell's ``data.image_size``), so ``dawsol metrics --cams``
or any other tool reading wsolevaluation's layout scores it as ``dawsol evaluate`` does. The
folder is written beside ``out`` and renamed onto it when complete: an interrupted run (or a full
disk, one line naming ``out``) leaves an existing ``out`` as it was. Only an empty folder or one
this command wrote (``.dawsol-cams`` in it) is replaced; any other existing ``out`` is refused.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from dawsol.atomic import remove_staging, staging_folder, write_errors_named
from dawsol.checkpoints.format import load_checkpoint, model_from_state, stored_settings
from dawsol.data.datasets import collate_eval
from dawsol.errors import DawsolError
from dawsol.evaluation.posthoc import extractor, score_maps, target_layer
from dawsol.evaluation.scoring import eval_dataset

MARKER = ".dawsol-cams"  # marks a folder this command wrote, the only kind it replaces


def _swap_in(staging: Path, out: Path) -> None:
    """Put the finished ``staging`` folder at ``out``: an old ``out`` is renamed aside first and removed
    last, so ``out`` is always either the old folder or the new one."""
    if not out.exists():
        staging.rename(out)
        return
    aside = staging_folder(out, "old")
    aside.rmdir()
    out.rename(aside)
    staging.rename(out)
    shutil.rmtree(aside, ignore_errors=True)


def write_cam_files(
    checkpoint: Path, method: str, split: str, out: Path, device: torch.device, layer: str | None = None
) -> int:
    """Write ``out/<image_id>.npy`` for every image of ``split``; return the number of files.

    ``layer`` overrides the checkpoint's ``eval.target_layer`` (None: the backbone's default).
    """
    extractor(method)  # an unknown method fails before any work
    state = load_checkpoint(checkpoint)
    settings = stored_settings(state)
    extract = extractor(method, channel_batch_size=settings.eval.channel_batch_size)
    model = model_from_state(state, device)
    layer = layer if layer is not None else settings.eval.target_layer
    if method != "cam":
        target_layer(model, layer)  # a bad name fails before any work
    dataset = eval_dataset(settings, split)
    loader = torch.utils.data.DataLoader(dataset, batch_size=settings.eval.batch_size, collate_fn=collate_eval)
    out = out.resolve()
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / MARKER).is_file())):
        raise DawsolError(f"{out}: exists and is not a folder dawsol cams wrote; pick another --out or empty it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_staging(out, "staging", "old")  # what a killed run left
    staging = staging_folder(out, "staging")
    try:
        with write_errors_named(out):
            for batch in loader:
                images, labels = batch["image"].to(device), batch["label"].to(device)
                maps = score_maps(
                    method, extract(model, images, labels, layer), tuple(images.shape[2:]), dataset.image_size
                )
                for image_id, scoremap in zip(batch["image_id"], maps, strict=True):
                    path = staging / f"{image_id}.npy"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, scoremap)  # float64, exactly what dawsol evaluate scores
            (staging / MARKER).write_text(f"{checkpoint} {method} {split}\n")
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(dataset)
