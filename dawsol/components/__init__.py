"""The component records: one record per backbone, WSOL method, DA loss and post-hoc extractor (docs/extending.md).

Each record holds every fact about its component that the rest of dawsol needs: the names the
schema admits (injected into ``workflow/schemas/params.schema.yaml`` at load, ``dawsol.config``),
the labels of the report, the facts the CLI's help and the error messages list, and *lazy
references* (``"module:attribute"``) to the code that implements it. These modules import no
torch, so Snakemake's parse and ``dawsol resolve`` read the names at the cost of a few dataclasses
(docs/extending.md, "Why the records import no torch").

A backbone, DA loss or extractor is declared where it is implemented, by a decorator on its
function (``@register_backbone(...)`` on a trunk builder, ``@register_da_loss(...)`` on an L_d
term, ``@register_extractor(...)`` on a map function). Its registry reads those decorators from the
source of its package with ``ast`` (``declared``), so the names are known without importing the
implementation (and torch); at import time each decorator checks that its declaration was read.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dawsol.errors import DawsolError
from dawsol.provenance import PACKAGE_ROOT

Declared = TypeVar("Declared")
CELL_PART = r"[a-z][a-z0-9_]*"  # one part of a cell name (dawsol.config.cells builds its pattern from it)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def check_name(kind: str, name: str, pattern: str) -> None:
    """A DawsolError unless ``name`` matches ``pattern`` whole."""
    if not re.fullmatch(pattern, name):
        raise DawsolError(f"{kind} name {name!r} does not match {pattern} (it is part of cell names, paths and keys)")


@dataclass(frozen=True)
class Declaration:
    """One ``@<decorator>(*args, **kwargs)`` found in the source: where it stands, what it decorates
    (``module:name``) and its literal arguments."""

    where: str  # file:line
    decorator: str
    reference: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def record(self, record_type: Callable[..., Declared], at: str, local: tuple[str, ...] = ()) -> Declared:
        """``record_type(*args, **kwargs)`` with the decorated definition's reference as field ``at`` and the
        fields ``local`` (attribute names of the same module) made references; a DawsolError naming the place if
        the arguments do not fit the record."""
        fields = {**self.kwargs, at: self.reference}
        module = self.reference.partition(":")[0]
        for field in local:
            if fields.get(field) is not None:
                fields[field] = f"{module}:{fields[field]}"
        try:
            return record_type(*self.args, **fields)
        except (TypeError, DawsolError) as exc:
            raise DawsolError(f"{self.where}: @{self.decorator}(...): {exc}") from None


def declared(package: str, decorator: str, root: Path = PACKAGE_ROOT) -> Iterator[Declaration]:
    """Every module-level function or class of ``package`` (``"dawsol.da"``; its modules in file-name order, the
    definitions in source order) decorated with ``@decorator(...)``. The arguments must be literals; a DawsolError
    names the file and line of one that is not."""
    parts = package.split(".")
    folder = root.joinpath(*parts[1:])
    paths = sorted(folder.glob("*.py"))
    if not paths:
        raise DawsolError(f"{folder}: no Python sources to read the {decorator} declarations from (a source install)")
    for path in paths:
        source = path.read_text(encoding="utf-8")
        if f"@{decorator}(" not in source:
            continue
        module = ".".join([*parts, path.stem]) if path.stem != "__init__" else package
        try:
            body = ast.parse(source, filename=str(path)).body
        except SyntaxError as exc:
            raise DawsolError(f"{path.relative_to(root.parent)}:{exc.lineno}: not valid Python ({exc.msg})") from None
        for node in body:
            if not isinstance(node, _DEFINITIONS):
                continue
            for call in node.decorator_list:
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == decorator:
                    where = f"{path.relative_to(root.parent)}:{call.lineno}"
                    yield Declaration(
                        where,
                        decorator,
                        f"{module}:{node.name}",
                        tuple(_literal(argument, where, decorator) for argument in call.args),
                        {keyword.arg: _literal(keyword.value, where, decorator) for keyword in call.keywords},
                    )


def _literal(node: ast.expr, where: str, decorator: str) -> Any:
    """The value of a literal argument, lists as tuples (a record is immutable)."""
    try:
        return _tuples(ast.literal_eval(node))
    except ValueError:
        raise DawsolError(
            f"{where}: @{decorator}(...) takes literal arguments only (strings, numbers, tuples), "
            f"not {ast.unparse(node)!r}"
        ) from None


def _tuples(value: Any) -> Any:
    return tuple(_tuples(item) for item in value) if isinstance(value, list | tuple) else value


def check_declared(kind: str, name: str, registry: dict[str, Any], field: str) -> Callable[[Declared], Declared]:
    """The decorator of a declaration at import time: the decorated definition unchanged once ``registry[name]``
    refers to it (its ``field`` is this definition's ``module:name``); a DawsolError otherwise (a declaration the
    source reader cannot see, e.g. one inside a function)."""

    def declare(definition: Declared) -> Declared:
        found = f"{definition.__module__}:{definition.__qualname__}"  # type: ignore[attr-defined]
        holder = getattr(registry.get(name), field, None)
        if holder != found:
            where = f"{name!r} is {holder}'s" if holder else f"the registry has no {name!r}"
            raise DawsolError(
                f"{kind} {name!r} declared on {found} is not read from the source ({where}): declare it on a "
                "module-level definition of its package, with literal arguments, under a name of its own "
                "(docs/extending.md)"
            )
        return definition

    return declare


def unique(kind: str, records: Iterator[Any], field: str) -> dict[str, Any]:
    """``{record.name: record}``; a DawsolError naming both definitions (each record's ``field``) if two records
    share a name."""
    registry: dict[str, Any] = {}
    for record in records:
        if record.name in registry:
            first, second = getattr(registry[record.name], field), getattr(record, field)
            raise DawsolError(f"{kind} {record.name!r} is declared twice: on {first} and on {second}")
        registry[record.name] = record
    return registry


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
