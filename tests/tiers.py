"""Test tiers (docs/testing.md): the parameters of a per-backbone test that leave the inner loop.

A full-size backbone (the paper's ResNet50, InceptionV3, VGG16) takes seconds to build and run on
a CPU; the inner loop (`pytest -m "not slow"`) checks the same logic on the small backbones and
the full suite on every one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from dawsol.components.backbones import BACKBONES

# the paper's backbones: those the official checkpoints hold (ResNet50, InceptionV3, VGG16)
FULL_SIZE_BACKBONES = frozenset(name for name, record in BACKBONES.items() if record.official_formats)


def small_backbones_first(values: Iterable[Any]) -> list[Any]:
    """``values`` for ``parametrize``, each naming a full-size backbone (itself, or as the first item of a tuple)
    marked ``slow``."""
    marked = []
    for value in values:
        arguments = value if isinstance(value, tuple) else (value,)
        full_size = arguments[0] in FULL_SIZE_BACKBONES
        marked.append(pytest.param(*arguments, marks=pytest.mark.slow) if full_size else value)
    return marked
