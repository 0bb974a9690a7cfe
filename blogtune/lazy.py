"""A package face whose names load on first use (PEP 562), so importing one module of a stage
does not import the rest (reading a post never pulls in the chunker; `format` reading the training
mix imports no teacher client)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module


def lazy_names(package: str, homes: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that imports `package.<homes[name]>` the first time `name` is used."""

    def __getattr__(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{homes[name]}"), name)

    return __getattr__
