"""The model: a torch-free config with presets (`config.py`) and one Transformer (`transformer.py`).

    from reference_llm.model import ModelConfig, Transformer
    model = Transformer(ModelConfig.preset("tiny"))

`reference_llm.model.config` imports no torch, so the estimator and `llmgen new` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reference_llm._lazy import lazy_exports

if TYPE_CHECKING:
    from reference_llm.model.config import PRESETS, ModelConfig
    from reference_llm.model.transformer import (
        IGNORE_INDEX,
        MLP,
        Attention,
        Block,
        KVCache,
        RMSNorm,
        Transformer,
        apply_rope,
        make_norm,
        rope_tables,
    )

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "PRESETS": "config",
        "ModelConfig": "config",
        "IGNORE_INDEX": "transformer",
        "MLP": "transformer",
        "Attention": "transformer",
        "Block": "transformer",
        "KVCache": "transformer",
        "RMSNorm": "transformer",
        "Transformer": "transformer",
        "apply_rope": "transformer",
        "make_norm": "transformer",
        "rope_tables": "transformer",
    },
)
