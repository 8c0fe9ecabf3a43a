"""The checkpoint: its format, atomic save and safe load, compatibility with a cell, and models rebuilt from it.

A checkpoint (docs/architecture.md, "Cell outputs") is a dict of tensors, numbers and strings
that loads with ``weights_only=True``: the cell, its resolved settings (``Settings.to_dict``,
read back by ``Settings.from_dict``, so evaluation and ``dawsol localize`` need no params.yaml),
the code version that trained it, the weights and the training state that a resumed run needs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dawsol.atomic import atomic_path, write_failed
from dawsol.config import Settings
from dawsol.da import DALoss
from dawsol.errors import DawsolError
from dawsol.layout import checkpoint_path, resume_path
from dawsol.models import WSOLModel, build_model
from dawsol.provenance import code_version

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1

ZIP_MAGIC = b"PK\x03\x04"  # a zip archive's first bytes, also where the archive is cut short
HEAD_WEIGHT = "classifier.weight"  # WSOLModel's class scores: [K, D, 1, 1]
# what torch.load raises on a damaged file besides pickle's own error (its weights-only unpickler fails anywhere)
TORCH_LOAD_FAILURES = (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError)
# what torch.save's zip writer says when the disk fills under it (it raises RuntimeError, not OSError)
_TORCH_WRITE_FAILURES = ("unexpected pos", "failed writing file", "file write failed", "iostream error")


def link_resume_state(checkpoint: Path, resume: Path) -> None:
    """Point ``resume`` at ``checkpoint``'s content atomically (a hard link, or a copy where links fail)."""
    with atomic_path(resume) as tmp:
        tmp.unlink()
        try:
            os.link(checkpoint, tmp)
        except OSError:
            shutil.copyfile(checkpoint, tmp)


def save_checkpoint(path: Path, state: dict[str, Any], resume: Path | None = None) -> None:
    """``torch.save`` through a temporary file and an atomic rename.

    With ``resume``, that second name is linked to the new content *before* the rename, so
    whenever ``path`` holds a checkpoint, ``resume`` holds the same one (a kill between the two
    steps leaves ``resume`` one save ahead, never behind). A full disk is a one-line DawsolError
    naming ``path``; the previous checkpoint stays as it was.
    """
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:
            message = str(exc).strip()
            if not any(marker in message for marker in _TORCH_WRITE_FAILURES):
                raise
            raise write_failed(path, f"torch.save: {message.splitlines()[-1][-120:]}") from None
        if resume is not None:
            link_resume_state(tmp, resume)


def require_torch_file(path: Path) -> None:
    """Refuse, before unpickling, a file that is not ``torch.save`` output: its zip archive, or the pickle of the
    legacy format (which starts with the pickle protocol byte)."""
    with open(path, "rb") as handle:
        start = handle.read(8)
    if not start:
        raise DawsolError(f"{path}: an empty file, not a torch checkpoint (a write cut short, e.g. by a full disk)")
    if not start.startswith((b"\x80", ZIP_MAGIC)):
        raise DawsolError(
            f"{path}: not a torch checkpoint (torch.save writes a zip archive or a pickle; this file starts with "
            f"{start!r}); give the checkpoint file itself"
        )


def weights_problem(weights: Mapping[str, torch.Tensor]) -> str | None:
    """What makes weights unusable (NaN or infinite values: a diverged or damaged model), or None."""
    bad = [name for name, tensor in weights.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if not bad:
        return None
    return f"{len(bad)} of {len(weights)} weights hold NaN or infinite values (e.g. {bad[0]})"


def load_plain_file(path: Path, refused: str, damaged: str) -> Any:
    """What a ``torch.save`` file holds, loaded on the CPU with ``weights_only=True`` and no fallback; a pickle that
    needs code to run is a one-line DawsolError ending in the advice ``refused``, a file that is not ``torch.save``
    output or is damaged one ending in ``damaged``."""
    require_torch_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        needed = re.search(r"GLOBAL ([\w.]+)", text)
        reason = f"its pickle needs code to run ({needed.group(1)})" if needed else _pickle_reason(text)
        raise DawsolError(f"{path}: refused, not a plain weights file: {reason}; {refused}") from None
    except TORCH_LOAD_FAILURES as exc:
        reason = (str(exc).strip().splitlines() or ["the file ends early"])[0].split(". ")[0].rstrip(".")
        raise DawsolError(
            f"{path}: unreadable, not a torch.save file or corrupted ({reason[:160]}); {damaged}"
        ) from None


def _pickle_reason(text: str) -> str:
    """The useful line of torch's weights-only error message."""
    match = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if match:
        return match.group(1).strip()[:160]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "unsupported content")[:160]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; anything else is a one-line DawsolError."""
    if not path.is_file():
        raise DawsolError(f"{path}: no checkpoint (run: dawsol train <cell>)")
    state = load_plain_file(path, refused="delete it and retrain", damaged="delete it and retrain")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DawsolError(f"{path}: not a dawsol checkpoint (format {CHECKPOINT_FORMAT}); delete it and retrain")
    problem = _structure_problem(state)
    if problem is not None:
        raise DawsolError(f"{path}: a damaged dawsol checkpoint ({problem}); delete it and retrain")
    return state


# what every checkpoint holds, by the type each entry must have (None: may be null, for imported ones)
_HEADER_TYPES: dict[str, type | tuple[type, ...]] = {
    "cell": str,
    "backbone": str,
    "settings_digest": str,
    "settings": dict,
    "num_classes": int,
    "model": dict,
    "records": list,
}
_TRAINING_TYPES: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "epochs": int,
    "batch": int,
    "optimizer": dict,
    "rng": dict,
    "stats": dict,
}


def _structure_problem(state: Mapping[str, Any]) -> str | None:
    """What is missing or of the wrong type in a loaded checkpoint, or None when its layout is sound."""
    expected = dict(_HEADER_TYPES)
    if not state.get("imported"):
        expected.update(_TRAINING_TYPES)
    for key, kind in expected.items():
        if key not in state:
            return f"no {key!r}"
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            return f"{key!r} is a {type(state[key]).__name__}"
    if not all(isinstance(value, torch.Tensor) for value in state["model"].values()):
        return "'model' holds more than tensors"
    return None


def check_compatible(state: Mapping[str, Any], settings: Settings, path: Path) -> None:
    """Refuse a checkpoint of another backbone or other settings, saying what to do.

    Training (resuming) and evaluation compare the weights digest, which leaves out the ``eval``
    block: it does not change the weights, so changing it re-evaluates a cell and never retrains
    it. The stored settings are read back first (``Settings.from_dict``), so a setting added to
    dawsol since, at its default, changes nothing.
    """
    if state["backbone"] != settings.model.backbone:
        raise DawsolError(
            f"{path}: checkpoint is for backbone {state['backbone']!r} but cell {settings.cell.name} uses "
            f"{settings.model.backbone!r}; delete {path.parent} to retrain this cell"
        )
    if state.get("imported"):  # only what shapes the imported weights' model has to agree
        stored = stored_settings(state)
        same = (stored.model, stored.data.num_classes, stored.wsol.method) == (
            dataclasses.replace(settings.model, pretrained=stored.model.pretrained),
            settings.data.num_classes,
            settings.wsol.method,
        )
        if not same:
            raise DawsolError(
                f"{path}: imported for other model settings than cell {settings.cell.name} has now; run "
                f"dawsol import-checkpoint {state['imported'].get('source')} --cell {settings.cell.name} again"
            )
        return
    stored = stored_settings(state).weights_digest()
    if stored != settings.weights_digest():
        raise DawsolError(
            f"{path}: checkpoint was trained with other settings (weights digest {stored}, now "
            f"{settings.weights_digest()}); restore params.yaml or delete {path.parent} to retrain"
        )


def resumable_checkpoint(settings: Settings) -> tuple[dict[str, Any], Path] | None:
    """The state to continue from and its file: ``checkpoint.pt``, else the resume link; None to start over.

    ``checkpoint.pt`` must fit the settings (else a DawsolError says what to do). The resume link
    is used only when a workflow manager deleted ``checkpoint.pt`` before re-running the job,
    and only if it holds an unfinished run of the same backbone and settings; otherwise (the
    settings changed, or a finished cell is being re-run on purpose) it is discarded.
    """
    path = checkpoint_path(settings.cell)
    if path.exists():
        state = load_checkpoint(path)
        if state.get("imported"):
            raise DawsolError(
                f"{path}: imported from {state['imported'].get('source')} (dawsol import-checkpoint), not trained "
                "by dawsol; evaluate it, or delete it to train this cell"
            )
        check_compatible(state, settings, path)
        return state, path
    resume = resume_path(settings.cell)
    if not resume.exists():
        return None
    try:
        state = load_checkpoint(resume)
        check_compatible(state, settings, resume)
    except DawsolError as exc:
        log.info("%s: not resuming from %s (%s); starting over", settings.cell.name, resume, exc)
        resume.unlink(missing_ok=True)
        return None
    if state["epoch"] >= settings.train.epochs:
        log.info("%s: %s holds a finished run; re-training as asked", settings.cell.name, resume)
        resume.unlink(missing_ok=True)
        return None
    return state, resume


def trained_checkpoint(settings: Settings) -> dict[str, Any]:
    """The cell's finished (or imported) checkpoint, fit for evaluating with ``settings``; a DawsolError otherwise."""
    path = checkpoint_path(settings.cell)
    if not path.is_file():
        raise DawsolError(
            f"{path}: no checkpoint; run: dawsol train {settings.cell.name} "
            f"(or dawsol import-checkpoint FILE --cell {settings.cell.name})"
        )
    state = load_checkpoint(path)
    check_compatible(state, settings, path)
    if not state.get("imported") and state["epoch"] < settings.train.epochs:
        raise DawsolError(
            f"{path}: training stopped at epoch {state['epoch']} of {settings.train.epochs}; "
            f"run: dawsol train {settings.cell.name}"
        )
    return state


def stored_settings(state: Mapping[str, Any]) -> Settings:
    """The settings a checkpoint was trained with."""
    try:
        return Settings.from_dict(state["settings"])
    except (KeyError, TypeError, ValueError, DawsolError) as exc:
        raise DawsolError(
            f"checkpoint of {state.get('cell')}: its stored settings do not fit this dawsol ({exc}); retrain the cell"
        ) from None


def _cell_header(settings: Settings) -> dict[str, Any]:
    """What every checkpoint says of its cell: format, cell, backbone, settings (and digest), code, K."""
    return {
        "format": CHECKPOINT_FORMAT,
        "cell": settings.cell.name,
        "backbone": settings.model.backbone,
        "settings_digest": settings.digest(),
        "settings": settings.to_dict(),
        "code": code_version(),
        "num_classes": settings.data.num_classes,
    }


def training_state(
    settings: Settings,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    da_loss: nn.Module | None,
    *,
    epoch: int,
    batch: int,
    stats: Mapping[str, Any],
    rng: Mapping[str, Any],
    records: list[dict[str, Any]],
    run_id: str | None,
) -> dict[str, Any]:
    """The checkpoint of a training run after ``epoch`` finished epochs and ``batch`` batches of the next."""
    return {
        **_cell_header(settings),
        "epoch": epoch,
        "epochs": settings.train.epochs,
        "batch": batch,
        "stats": dict(stats),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "da": None if da_loss is None else da_loss.state_dict(),
        "rng": dict(rng),
        "records": records,
        "mlflow_run_id": run_id,
    }


def imported_state(settings: Settings, model: nn.Module, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint of a model dawsol did not train (``dawsol import-checkpoint``): the cell, its settings,
    the weights and ``imported`` (where they came from: source, sha256, format, architecture, epoch);
    the training state is empty, not invented."""
    return {
        **_cell_header(settings),
        "imported": dict(provenance),
        "epoch": None,
        "epochs": None,
        "batch": None,
        "stats": None,
        "model": model.state_dict(),
        "optimizer": None,
        "da": None,
        "rng": None,
        "records": [],
        "mlflow_run_id": None,
    }


def restore_training(
    state: Mapping[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, da_loss: nn.Module | None
) -> None:
    """Load a checkpoint's weights, optimizer state and DA loss state (anchors, discriminator)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if da_loss is not None:
        da_loss.load_state_dict(state["da"])


def model_from_state(state: Mapping[str, Any], device: torch.device) -> WSOLModel:
    """Rebuild a checkpoint's model from the settings it stores, in eval mode (no pretrained weights are read).

    The weights are checked first: the head's class count must be the stored ``data.num_classes`` and every
    weight finite, so a damaged or diverged checkpoint never reaches an output.
    """
    settings = stored_settings(state)
    num_classes = settings.data.num_classes
    head = state["model"].get(HEAD_WEIGHT)
    scored = int(head.shape[0]) if head is not None and head.dim() > 0 else None
    if state["num_classes"] != num_classes or scored not in (None, num_classes):
        shown = f"{scored} classes ({HEAD_WEIGHT} {list(head.shape)})" if scored else f"{state['num_classes']} classes"
        raise DawsolError(
            f"checkpoint of {state['cell']}: its head scores {shown} but its settings say data.num_classes "
            f"{num_classes}; retrain the cell or import the right file"
        )
    problem = weights_problem(state["model"])
    if problem is not None:
        raise DawsolError(f"checkpoint of {state['cell']}: {problem}; retrain the cell (a lower train.lr?)")
    model = build_model(dataclasses.replace(settings.model, pretrained="none"), num_classes, settings.wsol)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise DawsolError(
            f"checkpoint of {state['cell']}: its weights do not fit a {settings.model.backbone} model "
            f"({str(exc).splitlines()[0][:120]}); retrain the cell"
        ) from None
    return model.to(device).eval()


def assigner_from_state(
    state: Mapping[str, Any], settings: Settings, feature_dim: int, device: torch.device
) -> nn.Module | None:
    """A DA cell's trained Target Sample Assigner (its anchors from the checkpoint); None without one."""
    if settings.da is None or not settings.da.use_tsa or state.get("da") is None:
        return None
    da_loss = DALoss(settings.da, settings.data.num_classes, feature_dim)
    da_loss.load_state_dict(state["da"])
    return da_loss.assigner.to(device).eval()
