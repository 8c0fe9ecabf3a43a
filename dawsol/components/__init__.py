"""The component records: one record per backbone, WSOL method, DA loss and post-hoc extractor (docs/extending.md).

Each record holds every fact about its component that the rest of dawsol needs: the names the
schema admits (injected into ``workflow/schemas/params.schema.yaml`` at load, ``dawsol.config``),
the labels of the report, the facts the CLI's help and the error messages list, and *lazy
references* (``"module:attribute"``) to the code that implements it. These modules import no
torch, so Snakemake's parse and ``dawsol resolve`` read the names at the cost of a few dataclasses
(docs/extending.md, "Why the records import no torch").
"""

from __future__ import annotations

import importlib
from typing import Any

from dawsol.errors import DawsolError


def load(reference: str) -> Any:
    """The attribute a lazy reference ``"package.module:attribute"`` names, its module imported on first use."""
    module, _, attribute = reference.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise DawsolError(f"component reference {reference!r} does not resolve ({exc})") from None


def known(kind: str, name: str, registry: dict[str, Any]) -> Any:
    """``registry[name]``; a DawsolError naming ``kind`` and listing the registered names otherwise."""
    if name not in registry:
        raise DawsolError(f"unknown {kind} {name!r} (known: {', '.join(registry)})")
    return registry[name]
