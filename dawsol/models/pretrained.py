"""Pretrained backbone weights: ImageNet weights, a local state dict or a dawsol checkpoint.

``model.pretrained`` is ``none`` (train from scratch), ``imagenet`` (each backbone's own source, its record in
``dawsol.components.backbones``: torchvision's weights API, cached under
``$TORCH_HOME/hub/checkpoints``, for the torchvision backbones) or a path: a state dict in the
layout of that backbone's network (e.g. the ImageNet file downloaded by hand), or a dawsol
checkpoint (``runs/<cell>/checkpoint.pt`` of a cell with the same backbone), whose trunk is
taken and whose score estimator is left out, to fine-tune from another cell.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from dawsol.errors import DawsolError
from dawsol.files import file_digest


def imagenet_url(enum_name: str) -> str:
    """Where torchvision's ImageNet (IMAGENET1K_V1) weights ``enum_name`` download from."""
    return getattr(torchvision.models, enum_name).IMAGENET1K_V1.url


def torchvision_state_dict(backbone: str, enum_name: str) -> dict[str, Tensor]:
    """torchvision's ImageNet (IMAGENET1K_V1) state dict ``enum_name``, downloaded once into torch's cache.

    The file is only ever read by ``load_verified`` (sha256 against the prefix its name carries, then
    ``weights_only``), never by torchvision's own loader, which unpickles anything. Offline and
    uncached, raise DawsolError naming the file and where to put it.
    """
    url = imagenet_url(enum_name)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            # a temporary file, renamed into place once its hash checks out: an interrupted download leaves nothing
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=_hash_prefix(cached), progress=False)
        except Exception as exc:
            raise DawsolError(
                f"cannot download ImageNet weights for {backbone} from {url} ({exc}); "
                f"offline, put that file at {cached} (set TORCH_HOME to change the cache folder) "
                "or set model.pretrained to a local state dict"
            ) from None
    return load_verified(cached, f"ImageNet weights for {backbone}")


def _hash_prefix(path: Path) -> str | None:
    """The sha256 prefix torch.hub file names carry (``resnet18-f37072fd.pth``), or None."""
    match = re.search(r"-([0-9a-f]{6,64})\.[a-z]+$", path.name)
    return match.group(1) if match else None


def load_verified(path: Path, what: str) -> dict[str, Tensor]:
    """A cached weights file, after checking its sha256 against its name's prefix, loaded with ``weights_only``."""
    prefix = _hash_prefix(path)
    if prefix is None:
        raise DawsolError(f"{what}: {path} carries no sha256 prefix in its name, so it cannot be checked")
    digest = file_digest(path)
    if not digest.startswith(prefix):
        raise DawsolError(
            f"{what}: {path} has sha256 {digest[:16]}..., not the {prefix} its name promises (a damaged or "
            "replaced file); delete it and run again to download it"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DawsolError(f"{what}: {path} is unreadable ({exc}); delete it and run again to download it") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DawsolError(f"{what}: {path} does not hold a state dict; delete it and run again to download it")
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


def misfit(
    expected: Mapping[str, Tensor],
    state: Mapping[str, Tensor],
    optional: tuple[str, ...] = (),
    unmapped: Sequence[str] = (),
    file_names: Mapping[str, str] | None = None,
) -> str:
    """How ``state`` does not fit a module whose state dict is ``expected``; '' when it fits.

    Names with a prefix in ``optional`` may be absent or extra; ``unmapped`` names of the file count as
    unexpected too; ``file_names`` (a model name -> its name in the file) names the file's weights in the
    text, e.g. ``1 missing (e.g. a), 2 of another shape (e.g. b: [3] in the file, [4] in the model)``.
    """
    names = file_names or {}
    missing = [name for name in expected if name not in state and not name.startswith(optional)]
    unexpected = [*unmapped, *(names.get(n, n) for n in state if n not in expected and not n.startswith(optional))]
    reshaped = [name for name in state if name in expected and state[name].shape != expected[name].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if reshaped:
        name = reshaped[0]
        problems.append(
            f"{len(reshaped)} of another shape (e.g. {names.get(name, name)}: {list(state[name].shape)} in the file, "
            f"{list(expected[name].shape)} in the model)"
        )
    return ", ".join(problems)


def load_into(
    net: nn.Module, state: Mapping[str, Tensor], backbone: str, source: str, dropped: tuple[str, ...]
) -> None:
    """Load ``state`` into the backbone's full network ``net``; heads the trunk drops (key prefixes
    ``dropped``) may be absent or extra.

    Any other missing or unexpected key, or a shape mismatch, raises DawsolError naming ``source``.
    """
    expected = net.state_dict()
    problems = misfit(expected, state, optional=dropped)
    if problems:
        raise DawsolError(
            f"model.pretrained: {source} is not a {backbone} state dict in its network's layout "
            f"({problems}); check model.pretrained and model.width"
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
    problems = misfit(trunk.state_dict(), state)
    if problems:
        raise DawsolError(
            f"model.pretrained: {source} is a checkpoint of another trunk ({problems}); "
            "use a checkpoint of a cell with the same backbone, width and WSOL layers"
        )
    trunk.load_state_dict(state)
