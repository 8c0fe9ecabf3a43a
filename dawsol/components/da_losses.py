"""The DA loss records: each L_d of params.yaml (``da.<method>.loss``) with every fact about it, torch-free.

A loss is declared on its term, in its own module of ``dawsol.da``::

    @register_da_loss("coral", "DA-WSOL-CORAL")
    def coral_term(discriminator, source, target, qualified, progress, grl_schedule): ...

and ``DA_LOSSES`` reads those declarations from the source (``dawsol.components.declared``).
A DA method's block in params.yaml named after a loss (``da.mmd``) uses that loss; any other block
(an ablation variant, ``da.mmd_nolu``) names its loss with ``loss:``. ``dawsol.da.loss`` applies a record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dawsol.components import CELL_PART, check_declared, check_name, declared, unique

Term = TypeVar("Term")


@dataclass(frozen=True)
class DALossRecord:
    """One L_d: its report label, a lazy reference to its term and to its trainable part, and whether it pairs
    source and target samples one to one (then ``sample_num_source`` must equal ``sample_num_target``)."""

    name: str
    title: str  # the report's label of the DA method named after it
    # ``(discriminator, source [B, n_s, D], target [B, n_t, D], qualified [B], progress, grl_schedule) -> scalar``
    term: str
    discriminator: str | None = None  # ``(feature_dim) -> nn.Module``, trained at the classifier's rate
    pairs_samples: bool = False

    def __post_init__(self) -> None:
        check_name("DA loss", self.name, CELL_PART)


def register_da_loss(
    name: str, title: str, *, discriminator: str | None = None, pairs_samples: bool = False
) -> Callable[[Term], Term]:
    """Declares the decorated L_d term as DA loss ``name`` with report label ``title``; ``discriminator`` names the
    class of its trainable part in the same module, ``pairs_samples`` says it pairs source and target samples."""
    return check_declared("DA loss", name, DA_LOSSES, "term")


DA_LOSSES: dict[str, DALossRecord] = unique(
    "DA loss",
    (
        found.record(DALossRecord, at="term", local=("discriminator",))
        for found in declared("dawsol.da", "register_da_loss")
    ),
    "term",
)
