"""Every concrete subclass of a base class in one package, the package imported file by file, so a
new part (a term, an evaluator) is tested the moment its file exists."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import TypeVar

T = TypeVar("T", bound=type)


def concrete_subclasses(base: T, package: ModuleType) -> list[T]:
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    found, stack = [], list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        if not inspect.isabstract(cls) and cls.__module__.startswith(package.__name__):
            found.append(cls)
    return sorted(set(found), key=lambda c: c.__name__)
