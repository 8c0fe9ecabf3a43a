"""The DA loss records: each L_d of params.yaml (``da.<method>.loss``) with every fact about it, torch-free.

A DA method's block in params.yaml named after a loss (``da.mmd``) uses that loss; any other block
(an ablation variant, ``da.mmd_nolu``) names its loss with ``loss:``. ``dawsol.da.loss`` applies a record.
"""

from __future__ import annotations

from dataclasses import dataclass


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


DA_LOSSES: dict[str, DALossRecord] = {
    record.name: record
    for record in (
        DALossRecord("mmd", "DA-WSOL-MMD", "dawsol.da.mmd:mmd_term", pairs_samples=True),
        DALossRecord(
            "dann", "DA-WSOL-DANN", "dawsol.da.dann:dann_term", discriminator="dawsol.da.dann:DomainDiscriminator"
        ),
    )
}
