"""Lazy re-exports: a package names its public verbs, and each module is imported on first use.

``import curator`` (or a room such as ``curator.store``) then stays light: it imports no torch,
pandas or FAISS until a name that needs them is touched. A package keeps its table as
``{module: (name, ...)}``, the one place its public names are listed.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping, Sequence


def lazy_exports(package: str, table: Mapping[str, Sequence[str]]) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``, resolving each name from its module in ``table``."""
    where = {name: module for module, names in table.items() for name in names}

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def dir_() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return sorted(where), getattr_, dir_
