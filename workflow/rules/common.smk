# Shared helpers for the rules: the grid's cells come from dawsol.config, never re-derived here.
from dawsol.config import grid_cells, load_params

PARAMS = "params.yaml"
PROFILE = config.get("profile")
PARAMS_TREE = load_params(PARAMS, PROFILE)
CELLS = [cell.name for cell in grid_cells(PARAMS_TREE, PARAMS)]
