"""Importing checkpoints dawsol did not train (DA-WSOL/BagCAMs, wsolevaluation) as a cell's dawsol checkpoint.

``dawsol import-checkpoint FILE --cell CELL`` reads the file with ``weights_only=True`` only, tells
the official layouts apart by their top-level keys (DA-WSOL/BagCAMs: ``state_dict_extractor`` and
``state_dict_classifier``; wsolevaluation: ``state_dict`` and ``architecture``), checks the
architecture and the class count K against the cell, renames the weights onto ``WSOLModel``, loads
them strictly and writes ``runs/<cell>/checkpoint.pt`` with where they came from (``imported``).

The renaming (one leading ``module.`` is stripped first):

- every extractor / trunk weight ``n`` -> ``trunk.n``, or ``trunk.`` + what the backbone's ``official_names``
  (a function of its family module) makes of it: VGG16's and ADL ResNet50's official indices, which skip
  removed pools and count ADL layers, become torchvision's, which dawsol keeps; a weight the official network
  never uses (BagCAMs' ADL ResNet50 extractor's ``fc.*``) is dropped;
- the classifier -> ``classifier.weight`` [K, D, 1, 1] / ``classifier.bias``: DA's ``fc.*`` as is,
  wsolevaluation's ``fc.*`` (a Linear, [K, D], reshaped) or InceptionV3's ``SPG_A4.*``.

``large_feature_map`` changes no name or shape in ResNet50/InceptionV3 files and is recorded in
none, so it always comes from the cell's settings, never from a guess.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dawsol.checkpoints.format import (
    imported_state,
    load_checkpoint,
    load_plain_file,
    save_checkpoint,
    weights_problem,
)
from dawsol.components import load
from dawsol.components.backbones import BACKBONES, DA_WSOL, WSOLEVALUATION
from dawsol.config import Settings
from dawsol.errors import DawsolError
from dawsol.files import file_digest
from dawsol.layout import checkpoint_path, resume_path
from dawsol.models import WSOLModel, build_model
from dawsol.models.pretrained import misfit
from dawsol.models.trunk import UNUSED_OFFICIAL_WEIGHT

log = logging.getLogger(__name__)

FORMAT_TITLES = {DA_WSOL: "DA-WSOL/BagCAMs", WSOLEVALUATION: "wsolevaluation"}


def architectures(fmt: str) -> tuple[str, ...]:
    """The architectures format ``fmt``'s training code writes, under dawsol's backbone names (their records'
    ``official_formats``)."""
    return tuple(name for name, record in BACKBONES.items() if fmt in record.official_formats)


TRUNK = "trunk."
MODULE_PREFIX = "module."
BN_COUNTER = "num_batches_tracked"


@dataclass(frozen=True)
class ImportResult:
    """What ``import_checkpoint`` wrote, and what it found in the file."""

    checkpoint: Path
    format: str
    architecture: str
    epoch: int | None
    num_classes: int
    large_feature_map: bool
    sha256: str

    def summary(self, source: Path) -> str:
        """One line for the user: what the file is and where its checkpoint went."""
        epoch = "not recorded" if self.epoch is None else str(self.epoch)
        return (
            f"{source}: {FORMAT_TITLES[self.format]} checkpoint, {self.architecture}, K={self.num_classes}, "
            f"epoch {epoch}, large_feature_map {str(self.large_feature_map).lower()} (the file does not record "
            f"it: taken from the cell's settings) -> {self.checkpoint}"
        )


@dataclass(frozen=True)
class Classifier:
    """The file's score estimator: its weight and bias, under the file's names."""

    weight_name: str
    weight: Tensor
    bias_name: str
    bias: Tensor


@dataclass(frozen=True)
class SourceCheckpoint:
    """An official checkpoint file, read: its format, architecture, epoch, trunk weights and classifier."""

    path: Path
    format: str
    architecture: str
    epoch: int | None
    trunk: dict[str, Tensor]  # the file's names, ``module.`` stripped, classifier left out
    classifier: Classifier


@dataclass
class MappedWeights:
    """The file's weights renamed: dawsol name -> (the file's name, tensor), and the file's names with no
    dawsol counterpart (left for the strict load to report)."""

    state: dict[str, tuple[str, Tensor]] = dataclasses.field(default_factory=dict)
    unmapped: list[str] = dataclasses.field(default_factory=list)


def import_checkpoint(path: Path, settings: Settings) -> ImportResult:
    """Import the official checkpoint ``path`` into ``settings``' cell: write ``runs/<cell>/checkpoint.pt``.

    Any problem (unsafe or unreadable file, other format, architecture or class count, a weight
    that does not fit) is a one-line DawsolError naming the file; nothing is written then.
    """
    destination = checkpoint_path(settings.cell)
    check_destination(destination)
    source = read_source(path)
    check_architecture(source, settings)
    num_classes = check_num_classes(source, settings)
    model = build_model(dataclasses.replace(settings.model, pretrained="none"), num_classes, settings.wsol)
    load_strictly(source, model, map_names(source, settings), settings)
    digest = file_digest(path)
    provenance = {
        "source": str(path),
        "sha256": digest,
        "format": source.format,
        "architecture": source.architecture,
        "epoch": source.epoch,
        "large_feature_map": settings.model.large_feature_map,
    }
    save_checkpoint(destination, imported_state(settings, model, provenance))
    resume_path(settings.cell).unlink(missing_ok=True)  # an older partial training of this cell never resumes
    return ImportResult(
        checkpoint=destination,
        format=source.format,
        architecture=source.architecture,
        epoch=source.epoch,
        num_classes=num_classes,
        large_feature_map=settings.model.large_feature_map,
        sha256=digest,
    )


def inspect_file(path: Path) -> str:
    """One line on what an official checkpoint file is (format, architecture, K, epoch, sha256); writes nothing."""
    source = read_source(path)
    weight = source.classifier.weight
    epoch = "not recorded" if source.epoch is None else str(source.epoch)
    return (
        f"{path}: {FORMAT_TITLES[source.format]} checkpoint, {source.architecture}, K={weight.shape[0]} "
        f"({source.classifier.weight_name} {list(weight.shape)}), epoch {epoch}, {len(source.trunk)} trunk entries, "
        f"sha256 {file_digest(path)}; large_feature_map is not recorded (the importing cell's settings give it)"
    )


def check_destination(destination: Path) -> None:
    """Refuse to replace anything at ``destination`` but an earlier import (a trained checkpoint stays)."""
    if not destination.exists():
        return
    try:
        state = load_checkpoint(destination)
    except DawsolError:
        raise DawsolError(
            f"{destination}: already exists and is not a readable dawsol checkpoint; delete it first to import"
        ) from None
    if not state.get("imported"):
        raise DawsolError(
            f"{destination}: holds a checkpoint dawsol trained (epoch {state.get('epoch')}); "
            "delete it first to import over it"
        )
    log.info("%s: replacing the earlier import of %s", destination, state["imported"].get("source"))


def load_weights_file(path: Path) -> dict[str, Any]:
    """The top-level dict of a ``torch.save`` file, loaded with ``weights_only=True`` and no fallback."""
    if not path.exists():
        raise DawsolError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise DawsolError(f"{path}: not a file (give the checkpoint file itself)")
    loaded = load_plain_file(
        path,
        refused="dawsol loads checkpoints with weights_only=True only",
        damaged="download it again, or check it is the checkpoint file itself",
    )
    if not isinstance(loaded, dict):
        raise DawsolError(f"{path}: holds a {type(loaded).__name__}, not a checkpoint dict")
    return loaded


def detect_format(path: Path, top: Mapping[str, Any]) -> str:
    """``da-wsol`` or ``wsolevaluation`` from the top-level keys; anything else is a DawsolError."""
    if "state_dict_extractor" in top and "state_dict_classifier" in top:
        return DA_WSOL
    if "state_dict" in top and "architecture" in top:
        return WSOLEVALUATION
    if "format" in top and "model" in top:
        raise DawsolError(
            f"{path}: already a dawsol checkpoint, nothing to import; copy it to runs/<cell>/checkpoint.pt "
            "or use it as model.pretrained"
        )
    keys = ", ".join(sorted(map(str, top))) or "none"
    raise DawsolError(
        f"{path}: not a DA-WSOL/BagCAMs (state_dict_extractor, state_dict_classifier) or wsolevaluation "
        f"(state_dict, architecture) checkpoint; its top-level keys: {keys}"
    )


def tensor_dict(path: Path, where: str, value: Any) -> dict[str, Tensor]:
    """A file's state dict with one leading ``module.`` stripped from each name; a DawsolError if it is none."""
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()
    ):
        raise DawsolError(f"{path}: {where} is not a state dict (a mapping of names to tensors)")
    state: dict[str, Tensor] = {}
    for name, tensor in value.items():
        bare = name.removeprefix(MODULE_PREFIX)
        if bare in state:
            raise DawsolError(f"{path}: {where} holds {bare} both with and without the module. prefix")
        state[bare] = tensor
    return state


def read_source(path: Path) -> SourceCheckpoint:
    """Load and take apart an official checkpoint file (no check against a cell yet)."""
    top = load_weights_file(path)
    fmt = detect_format(path, top)
    architecture = top.get("architecture")
    if not isinstance(architecture, str):
        raise DawsolError(f"{path}: no architecture string in the file (found {architecture!r})")
    if architecture not in architectures(fmt):
        raise DawsolError(
            f"{path}: architecture {architecture!r} is not one a {FORMAT_TITLES[fmt]} checkpoint has "
            f"({', '.join(architectures(fmt))})"
        )
    epoch = top.get("epoch")
    epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
    if fmt == DA_WSOL:
        trunk = tensor_dict(path, "state_dict_extractor", top["state_dict_extractor"])
        head = tensor_dict(path, "state_dict_classifier", top["state_dict_classifier"])
        classifier = _take_classifier(path, "state_dict_classifier", head, "fc", 4)
        leftover = sorted(head)
        if leftover:
            raise DawsolError(
                f"{path}: state_dict_classifier holds {len(leftover)} entries besides fc.weight/fc.bias, "
                f"e.g. {leftover[0]}"
            )
    else:
        trunk = tensor_dict(path, "state_dict", top["state_dict"])
        if architecture == "inception_v3":
            classifier = _take_classifier(path, "state_dict", trunk, "SPG_A4", 4)
        else:
            classifier = _take_classifier(path, "state_dict", trunk, "fc", 2)
    problem = weights_problem(
        {**trunk, classifier.weight_name: classifier.weight, classifier.bias_name: classifier.bias}
    )
    if problem is not None:
        raise DawsolError(f"{path}: {problem}; not a usable model")
    return SourceCheckpoint(path, fmt, architecture, epoch, trunk, classifier)


def _take_classifier(path: Path, where: str, state: dict[str, Tensor], prefix: str, ndim: int) -> Classifier:
    """Remove ``<prefix>.weight``/``.bias`` from ``state``; the weight must be ``ndim``-D ([K, D] or [K, D, 1, 1])."""
    names = (f"{prefix}.weight", f"{prefix}.bias")
    absent = [name for name in names if name not in state]
    if absent:
        raise DawsolError(f"{path}: {where} has no classifier {absent[0]} (the class scores' weights)")
    weight, bias = state.pop(names[0]), state.pop(names[1])
    if weight.dim() != ndim:
        expected = "[K, D] (a Linear)" if ndim == 2 else "[K, D, 1, 1] (a 1x1 conv)"
        raise DawsolError(
            f"{path}: {where} {names[0]} is {weight.dim()}-D {list(weight.shape)}, but this layout's classifier "
            f"is {ndim}-D {expected}; the file is not the checkpoint its keys say"
        )
    return Classifier(names[0], weight, names[1], bias)


def check_architecture(source: SourceCheckpoint, settings: Settings) -> None:
    """The file's architecture must be the cell's backbone."""
    backbone = settings.model.backbone
    if source.architecture != backbone:
        raise DawsolError(
            f"{source.path}: a {FORMAT_TITLES[source.format]} checkpoint of {source.architecture}, but cell "
            f"{settings.cell.name} uses backbone {backbone}; import it into a {source.architecture} cell"
        )


def check_num_classes(source: SourceCheckpoint, settings: Settings) -> int:
    """K, the file's class count (its classifier's rows); it must equal the cell's ``data.num_classes``."""
    classifier = source.classifier
    count = int(classifier.weight.shape[0])
    if count != settings.data.num_classes:
        raise DawsolError(
            f"{source.path}: its classifier has K={count} classes ({classifier.weight_name} "
            f"{list(classifier.weight.shape)}), but cell {settings.cell.name} has data.num_classes "
            f"{settings.data.num_classes}; import it into a cell of the dataset it was trained on"
        )
    return count


def map_names(source: SourceCheckpoint, settings: Settings) -> MappedWeights:
    """The file's weights under dawsol's names (the module docstring's rules), for the cell's backbone,
    WSOL method (ADL shifts indices) and ``large_feature_map`` (VGG16's indices)."""
    adl = settings.wsol.method == "adl"
    large = settings.model.large_feature_map
    record = BACKBONES[source.architecture]
    rename = load(record.official_names) if record.official_names else None
    mapped = MappedWeights()
    for name, tensor in source.trunk.items():
        target = rename(name, adl, large) if rename else name
        if target == UNUSED_OFFICIAL_WEIGHT:
            continue
        if target is None:
            mapped.unmapped.append(name)
        else:
            mapped.state[TRUNK + target] = (name, tensor)
    classifier = source.classifier
    weight = classifier.weight
    if weight.dim() == 2:
        weight = weight.reshape(*weight.shape, 1, 1)  # a Linear's [K, D] as the 1x1 conv's [K, D, 1, 1]
    mapped.state["classifier.weight"] = (classifier.weight_name, weight)
    mapped.state["classifier.bias"] = (classifier.bias_name, classifier.bias)
    return mapped


def load_strictly(source: SourceCheckpoint, model: WSOLModel, mapped: MappedWeights, settings: Settings) -> None:
    """Load the mapped weights into ``model``: every weight it has, nothing else, each of its shape.

    Only absent batch-norm counters (``num_batches_tracked``, from old torch versions) are
    filled in, with 0. Anything else that does not fit is one DawsolError listing counts and examples.
    """
    expected = model.state_dict()
    state = {name: tensor for name, (_, tensor) in mapped.state.items()}
    for name in expected:
        if name not in state and name.rsplit(".", 1)[-1] == BN_COUNTER:
            state[name] = torch.zeros((), dtype=torch.int64)
    file_names = {name: file_name for name, (file_name, _) in mapped.state.items()}
    problems = misfit(expected, state, unmapped=mapped.unmapped, file_names=file_names)
    if problems:
        raise DawsolError(
            f"{source.path}: its weights do not fit cell {settings.cell.name}'s {settings.model.backbone} model "
            f"(wsol {settings.wsol.method}, large_feature_map {str(settings.model.large_feature_map).lower()}): "
            f"{problems}{layout_hint(source, settings)}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DawsolError(f"{source.path}: strict load failed ({str(exc).splitlines()[0][:160]})") from None


def layout_hint(source: SourceCheckpoint, settings: Settings) -> str:
    """A pointer to the setting that would fit, where the file's names show another layout ('' if none): the
    backbone's ``official_hint``."""
    reference = BACKBONES[source.architecture].official_hint
    if reference is None:
        return ""
    return load(reference)(source.trunk, settings.wsol.method == "adl", settings.model.large_feature_map)
