"""Parallel training engines behind one interface (see `base.py`); `build_engine` picks one by
`distributed.strategy` and imports the heavy ones (DDP, FSDP2, DeepSpeed) only when chosen."""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use (PEP 562) so that `ds_config`, which is plain JSON work used by
# `llmgen check`, can be imported without loading torch.
_EXPORTS = {"Engine": "base", "OptimizerState": "base", "SingleDeviceEngine": "base", "build_engine": "base"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
