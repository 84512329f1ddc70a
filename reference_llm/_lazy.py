"""Package exports imported on first use (PEP 562).

A package `__init__` declares which submodule holds each public name; nothing is imported until a name
is used. This keeps torch-free paths torch-free (`llmgen new` reads `reference_llm.model.config` without
loading torch) and keeps packages that import each other free of import cycles. Each `__init__` also
lists the same names under `TYPE_CHECKING`, so the type checker sees real types instead of `Any`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """Return `(__getattr__, __all__)` for `package`, where `exports` maps a name to its submodule."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__, sorted(exports)
