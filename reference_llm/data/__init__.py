"""The data pipeline: corpus -> normalise -> filter -> dedup -> PII scrub -> tokenizer -> token shards.

    prepared = prepare_data(data_cfg)            # cached under data_cfg.cache_dir
    loader = TokenLoader(prepared.dir, "train", seq_len=256, batch_size=16, seed=1337)
    x, y = loader.next_batch()

`scan_pii` / `scrub_pii` work on any text. See docs/data.md.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use (PEP 562): `from reference_llm.data import scan_pii` in a compliance
# check should not pay the ~3 s it takes to import torch, which only the loader and the config need.
_EXPORTS = {
    "PreparedData": "build",
    "load_prepared": "build",
    "prepare_data": "build",
    "normalize_text": "clean",
    "DedupSettings": "dedup",
    "exact_dedup": "dedup",
    "near_dedup": "dedup",
    "Document": "documents",
    "FilterSettings": "filters",
    "apply_filters": "filters",
    "TokenLoader": "loader",
    "PII_KINDS": "pii",
    "Finding": "pii",
    "scan_pii": "pii",
    "scrub_pii": "pii",
    "PipelineSettings": "pipeline",
    "clean_documents": "pipeline",
    "split_documents": "pipeline",
    "BadRecords": "readers",
    "iter_documents": "readers",
    "iter_records": "readers",
    "read_meta": "shards",
    "token_dtype": "shards",
    "SourceFile": "sources",
    "discover": "sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
