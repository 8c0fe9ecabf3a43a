"""Test tiers (docs/testing.md): the parameters of a per-backbone test that leave the inner loop.

A full-size backbone (the paper's ResNet50, InceptionV3, VGG16) takes seconds to build and run on
a CPU; the inner loop (`pytest -m "not slow"`) checks the same logic on the small backbones and
the full suite on every one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

FULL_SIZE_BACKBONES = frozenset({"resnet50", "inception_v3", "vgg16"})


def small_backbones_first(values: Iterable[Any]) -> list[Any]:
    """``values`` for ``parametrize``, each naming a full-size backbone (itself, or as the first item of a tuple)
    marked ``slow``."""
    marked = []
    for value in values:
        name = value[0] if isinstance(value, tuple) else value
        marked.append(pytest.param(value, marks=pytest.mark.slow) if name in FULL_SIZE_BACKBONES else value)
    return marked
