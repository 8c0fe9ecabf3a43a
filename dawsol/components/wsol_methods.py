"""The WSOL method records: each method of params.yaml (a cell's ``<wsol>``) with every fact about it, torch-free.

A method changes the input batch (HaS, CutMix: ``augment``), the trunk (ADL: ``trunk_layer``,
placed by ``dawsol.models``), adds a head with its own losses and CAM and takes its own trunk
variant (ACoL, SPG: ``head``, ``trunk_variant``; ``dawsol.wsol.heads``) or nothing (CAM). Its
options are the schema's ``wsol.<method>`` block; ``dawsol.wsol.methods`` applies a record.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WSOLMethodRecord:
    """One WSOL method: its report label and lazy references to what it changes (None: nothing there)."""

    name: str
    title: str  # the report's label
    augment: str | None = None  # ``(images, labels, options, generator) -> dawsol.wsol.augment.MixedBatch``
    trunk_layer: str | None = None  # ``(options) -> nn.Module``, the layer placed inside the trunk
    head: str | None = None  # ``(options, dawsol.wsol.heads.TrunkFacts) -> Head``
    trunk_variant: str = "cam"  # one of dawsol.models.trunk.TRUNK_VARIANTS


WSOL_METHODS: dict[str, WSOLMethodRecord] = {
    record.name: record
    for record in (
        WSOLMethodRecord("cam", "CAM"),
        WSOLMethodRecord("has", "HaS", augment="dawsol.wsol.augment:hide_and_seek"),
        WSOLMethodRecord("cutmix", "CutMix", augment="dawsol.wsol.augment:cutmix"),
        WSOLMethodRecord("adl", "ADL", trunk_layer="dawsol.wsol.adl:adl_layer"),
        WSOLMethodRecord("acol", "ACoL", head="dawsol.wsol.heads:acol_head", trunk_variant="acol"),
        WSOLMethodRecord("spg", "SPG", head="dawsol.wsol.heads:spg_head", trunk_variant="spg"),
    )
}
