"""What every WSOL trunk is: a feature extractor with its stages, new layers, SPG taps and post-hoc facts.

Each trunk maps images to pixel features ``[B, D, h, w]`` (post-ReLU) and names the layers it
adds to the pretrained network (``new_layers``), which train at the classifier's learning rate
where the official code does so. Pretrained weights load into the unmodified network first, so
the state-dict keys stay that network's (e.g. torchvision's ``layer3.0.conv1.weight``). Each
family lives in a module of its own beside this one, with each backbone declared on its builder
(``dawsol.components.backbones.register_backbone``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from torch import nn

from dawsol.errors import DawsolError
from dawsol.wsol.adl import ADL

TRUNK_VARIANTS = ("cam", "acol", "spg")


class Tap(NamedTuple):
    """Where an SPG side branch reads the trunk: the ``output`` (or ``input``) of module ``path``, ``channels`` wide."""

    path: str
    channels: int
    at_input: bool = False


class Trunk(nn.Module):
    """A feature extractor: ``forward(images) -> features [B, D, h, w]``.

    ``stages()`` lists its stages in input order (each a tuple of parameter-name prefixes);
    ``freeze(n)`` fixes the first ``n``: no gradients (so autograd skips them), batch norm in
    eval mode for good, and the optimizer never sees them (``model.frozen_stages``).

    The post-hoc facts (docs/posthoc.md) are its forward's: ``iterated`` names the containers whose
    children it calls one by one (a hook on the container never fires, so the name stands for its last
    child), ``guided_functional`` the modules whose output goes into a functional ReLU that BagCAMs
    guides as a module, ``own_target_layer`` the default target layer where this variant lacks the
    backbone's (its record's ``target_layer``).
    """

    feature_dim: int
    new_layers: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()
    acol_head_init: str = "xavier"  # how ACoL's heads are initialised: "xavier", or "he" (ResNet, as the official code)
    iterated: tuple[str, ...] = ()
    guided_functional: tuple[str, ...] = ()
    own_target_layer: str | None = None

    def spg_taps(self) -> tuple[Tap, Tap] | None:
        """The two trunk places SPG's side branches B1 and B2 read, shallow first (None: not defined here)."""
        return None

    def new_layer_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the layers added to the pretrained network."""
        for name, param in self.named_parameters():
            if name.split(".")[0] in self.new_layers:
                yield name, param

    def stages(self) -> list[tuple[str, ...]]:
        """The trunk's stages in input order, as parameter-name prefixes (empty: it cannot be frozen by stage)."""
        return []

    def freeze(self, count: int) -> None:
        """Freeze the first ``count`` stages; a DawsolError if the trunk has fewer (or none to freeze)."""
        if count == 0:
            return
        stages = self.stages()
        if count > len(stages):
            raise DawsolError(
                f"model.frozen_stages is {count} but this trunk has {len(stages)} stage(s) to freeze "
                f"({type(self).__name__}); lower it"
            )
        self.frozen = tuple(prefix for stage in stages[:count] for prefix in stage)
        for name, param in self.named_parameters():
            if _under(name, self.frozen):
                param.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Trunk:
        super().train(mode)
        for name, module in self.named_modules():
            if self.frozen and _under(name, self.frozen):
                module.eval()
        return self


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@dataclass(frozen=True)
class TrunkRequest:
    """What a cell asks of its backbone's trunk builder: ``load_pretrained`` loads the backbone's pretrained weights
    into its unmodified network; the large feature map (output stride 8), a channel ``width`` multiplier (backbones
    that take one), the ADL layer to place and the WSOL method's trunk ``variant`` (one of TRUNK_VARIANTS)."""

    load_pretrained: Callable[[nn.Module], None]
    large_feature_map: bool = False
    width: float = 1.0
    adl: ADL | None = None
    variant: str = "cam"


# what a backbone's ``official_names`` returns for a weight an official file keeps but its network never uses
UNUSED_OFFICIAL_WEIGHT = ""

# a backbone's trunk builder, declared with ``dawsol.components.backbones.register_backbone``
TrunkBuilder = Callable[[TrunkRequest], Trunk]
