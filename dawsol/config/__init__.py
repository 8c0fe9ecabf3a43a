"""Settings: the cell name (``cells``), the typed frozen settings and their digests (``settings``), params.yaml with
its schema, profiles and overrides (``params``), and resolution of a cell's settings and of the grid (``resolve``).

The package's face re-exports each module's ``__all__`` (what callers import from ``dawsol.config``); it needs no
torch.
"""

from dawsol.config import cells, params, settings
from dawsol.config import resolve as resolution  # the module: its function ``resolve`` takes the name below
from dawsol.config.cells import *  # noqa: F403
from dawsol.config.params import *  # noqa: F403
from dawsol.config.resolve import *  # noqa: F403
from dawsol.config.settings import *  # noqa: F403

__all__ = [*cells.__all__, *params.__all__, *resolution.__all__, *settings.__all__]
