"""Package attributes that import their module on first use (PEP 562), so that importing one light
module of a package does not import the heavy ones beside it (torch, accelerate)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, module_by_name: dict[str, str]) -> Callable[[str], Any]:
    """A package's module-level ``__getattr__``: a name of ``module_by_name`` is read from its
    module, imported now; any other name is an AttributeError, as for a plain module."""

    def __getattr__(name: str) -> Any:
        if name not in module_by_name:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module_by_name[name]), name)

    return __getattr__
