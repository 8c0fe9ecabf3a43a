"""Pretrained backbone weights: ImageNet weights, a local state dict or a dawsol checkpoint.

``model.pretrained`` is ``none`` (train from scratch), ``imagenet`` (each backbone's own source,
``dawsol.models.registry``: torchvision's weights API, cached under
``$TORCH_HOME/hub/checkpoints``, for the torchvision backbones) or a path: a state dict in the
layout of that backbone's network (e.g. the ImageNet file downloaded by hand), or a dawsol
checkpoint (``runs/<cell>/checkpoint.pt`` of a cell with the same backbone), whose trunk is
taken and whose score estimator is left out, to fine-tune from another cell.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from dawsol.errors import DawsolError


def torchvision_imagenet(backbone: str, enum_name: str) -> Callable[[], dict[str, Tensor]]:
    """The loader of torchvision's ImageNet (IMAGENET1K_V1) state dict ``enum_name`` for ``backbone``."""
    return lambda: torchvision_state_dict(backbone, enum_name)


def torchvision_state_dict(backbone: str, enum_name: str) -> dict[str, Tensor]:
    """torchvision's ImageNet (IMAGENET1K_V1) state dict ``enum_name``, downloaded once.

    Offline and uncached, raise DawsolError naming the file and where to put it.
    """
    weights = getattr(torchvision.models, enum_name).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    was_cached = cached.is_file()
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        if was_cached:
            raise DawsolError(
                f"cached ImageNet weights {cached} for {backbone} are unreadable ({exc}); "
                "delete the file and run again to re-download it"
            ) from None
        raise DawsolError(
            f"cannot download ImageNet weights for {backbone} from {weights.url} ({exc}); "
            f"offline, put that file at {cached} (set TORCH_HOME to change the cache folder) "
            "or set model.pretrained to a local state dict"
        ) from None
    return dict(state)


TRUNK_PREFIX = "trunk."


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """A state dict from ``path`` (plain, or under a ``state_dict``/``model`` key; ``module.`` stripped).

    A dawsol checkpoint gives its model's state (``trunk.*`` and ``classifier.*`` keys).
    """
    if not path.is_file():
        raise DawsolError(
            f"model.pretrained: {path} does not exist (use none, imagenet or the path of a state dict file)"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DawsolError(f"model.pretrained: {path} is not a readable torch state dict ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise DawsolError(f"model.pretrained: {path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def load_into(
    net: nn.Module, state: Mapping[str, Tensor], backbone: str, source: str, dropped: tuple[str, ...]
) -> None:
    """Load ``state`` into the backbone's full network ``net``; heads the trunk drops (key prefixes
    ``dropped``) may be absent or extra.

    Any other missing or unexpected key, or a shape mismatch, raises DawsolError naming ``source``.
    """
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(dropped)]
    unexpected = [k for k in state if k not in expected and not k.startswith(dropped)]
    wrong_shape = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
    if wrong_shape:
        key = wrong_shape[0]
        problems.append(
            f"{len(wrong_shape)} shape mismatch(es), e.g. {key}: "
            f"{tuple(state[key].shape)} in the file, {tuple(expected[key].shape)} in the model"
        )
    if problems:
        raise DawsolError(
            f"model.pretrained: {source} is not a {backbone} state dict in its network's layout "
            f"({'; '.join(problems)}); check model.pretrained and model.width"
        )
    net.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def pretrained_state(
    pretrained: str, imagenet: Callable[[], dict[str, Tensor]]
) -> tuple[dict[str, Tensor] | None, bool]:
    """``model.pretrained``'s weights and whether they are a WSOL trunk's (from a dawsol checkpoint).

    ``(None, False)`` for ``none``; ``imagenet()`` for ``imagenet``; otherwise the file's state
    dict, to load into the backbone's network (``load_into``) or, for a trunk's, into the built
    trunk (``load_trunk``).
    """
    if pretrained == "none":
        return None, False
    if pretrained == "imagenet":
        return imagenet(), False
    state = load_state_dict_file(Path(pretrained))
    if any(key.startswith(TRUNK_PREFIX) for key in state):
        return {k.removeprefix(TRUNK_PREFIX): v for k, v in state.items() if k.startswith(TRUNK_PREFIX)}, True
    return state, False


def load_trunk(trunk: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load a dawsol checkpoint's trunk weights into ``trunk``; any mismatch raises DawsolError naming ``source``."""
    expected = trunk.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        key = (missing or unexpected or wrong_shape)[0]
        raise DawsolError(
            f"model.pretrained: {source} is a checkpoint of another trunk ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong_shape)} differently shaped weight(s), e.g. {key}); "
            "use a checkpoint of a cell with the same backbone, width and WSOL layers"
        )
    trunk.load_state_dict(state)
