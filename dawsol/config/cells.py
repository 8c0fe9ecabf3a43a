"""The cell name ``<dataset>/<backbone>/<wsol>-<da>/seed<k>`` (search trials ``.../seed<k>-trial<j>``): its pattern
(also Snakemake's wildcard constraint) and its parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dawsol.components import CELL_PART
from dawsol.errors import DawsolError

__all__ = ["CELL_PATTERN", "MAX_SEED", "Cell", "parse_cell"]

MAX_SEED = 2**32 - 1
# a cell name, as a regular expression without anchors (also Snakemake's {cell} wildcard constraint)
CELL_PATTERN = f"{CELL_PART}/{CELL_PART}/{CELL_PART}-{CELL_PART}/seed[0-9]+(?:-trial[0-9]+)?"
_CELL_RE = re.compile(
    rf"^(?P<dataset>{CELL_PART})/(?P<backbone>{CELL_PART})/"
    rf"(?P<wsol>{CELL_PART})-(?P<da>{CELL_PART})/seed(?P<seed>[0-9]+)(?:-trial(?P<trial>[0-9]+))?$"
)


@dataclass(frozen=True)
class Cell:
    """One point of the grid; every output path of a cell derives from its name."""

    dataset: str
    backbone: str
    wsol: str
    da: str
    seed: int
    trial: int | None = None  # a search trial (docs/search.md): settings drawn from params.yaml `search`

    @property
    def name(self) -> str:
        """The canonical ``<dataset>/<backbone>/<wsol>-<da>/seed<k>[-trial<j>]`` form."""
        trial = "" if self.trial is None else f"-trial{self.trial}"
        return f"{self.dataset}/{self.backbone}/{self.wsol}-{self.da}/seed{self.seed}{trial}"

    @property
    def method(self) -> str:
        """``<wsol>-<da>``, the method column of the tables."""
        return f"{self.wsol}-{self.da}"

    @property
    def group(self) -> str:
        """``<dataset>/<backbone>/<wsol>-<da>``: the key of params.yaml ``tuned`` and of a search."""
        return f"{self.dataset}/{self.backbone}/{self.method}"

    def record(self) -> dict[str, str | int]:
        """The cell's name and parts as its ``metrics.json`` opens with them."""
        return {
            "cell": self.name,
            "dataset": self.dataset,
            "backbone": self.backbone,
            "wsol": self.wsol,
            "da": self.da,
            "seed": self.seed,
        }

    def __str__(self) -> str:
        return self.name


def parse_cell(name: str) -> Cell:
    """Parse a cell name; raise DawsolError on a malformed one."""
    match = _CELL_RE.match(name.strip().strip("/"))
    if match is None:
        raise DawsolError(
            f"malformed cell {name!r}: expected <dataset>/<backbone>/<wsol>-<da>/seed<k>, "
            "e.g. synthetic/resnet18/cam-mmd/seed0 (a search trial: .../seed0-trial3)"
        )
    groups = match.groupdict()
    if int(groups["seed"]) > MAX_SEED:
        raise DawsolError(f"cell {name!r}: seed {groups['seed']} is above {MAX_SEED} (2^32 - 1, numpy's limit)")
    return Cell(
        dataset=groups["dataset"],
        backbone=groups["backbone"],
        wsol=groups["wsol"],
        da=groups["da"],
        seed=int(groups["seed"]),
        trial=None if groups["trial"] is None else int(groups["trial"]),
    )
