"""Settings: the cell name (``cells``), the typed frozen settings and their digests (``settings``), params.yaml with
its schema, profiles and overrides (``params``), and resolution of a cell's settings and of the grid (``resolve``).

The package's face re-exports what callers import from ``dawsol.config``; it needs no torch.
"""

from dawsol.config.cells import CELL_PATTERN, MAX_SEED, Cell, parse_cell
from dawsol.config.params import (
    DEFAULT_PARAMS,
    PACKAGE_ROOT,
    PROJECT_ROOT,
    SCHEMA_PATH,
    apply_overrides,
    check_cell,
    check_override_keys,
    load_params,
    load_schema,
    parse_override,
    validate_params,
)
from dawsol.config.resolve import grid_cells, grid_datasets, grid_imports, resolve
from dawsol.config.settings import (
    DA_COMMON_KEYS,
    DASettings,
    DataSettings,
    EvalSettings,
    ModelSettings,
    Settings,
    TrackingSettings,
    TrainSettings,
    WSOLSettings,
    deep_merge,
    tree_digest,
)

__all__ = [
    "CELL_PATTERN",
    "DA_COMMON_KEYS",
    "DEFAULT_PARAMS",
    "MAX_SEED",
    "PACKAGE_ROOT",
    "PROJECT_ROOT",
    "SCHEMA_PATH",
    "Cell",
    "DASettings",
    "DataSettings",
    "EvalSettings",
    "ModelSettings",
    "Settings",
    "TrackingSettings",
    "TrainSettings",
    "WSOLSettings",
    "apply_overrides",
    "check_cell",
    "check_override_keys",
    "deep_merge",
    "grid_cells",
    "grid_datasets",
    "grid_imports",
    "load_params",
    "load_schema",
    "parse_cell",
    "parse_override",
    "resolve",
    "tree_digest",
    "validate_params",
]
