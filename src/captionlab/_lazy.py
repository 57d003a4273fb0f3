"""Names a package exports from its modules, imported on first use (PEP 562).

``captionlab.vision`` and ``captionlab.explain`` re-export their modules' main names without
importing those modules (and torch) when the package itself is imported::

    __getattr__, __all__ = lazy_exports(__name__, {"Explainer": "words", ...})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """A module ``__getattr__`` that imports ``package.<exports[name]>`` when ``name`` is
    first read, and the sorted ``__all__``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__, sorted(exports)
