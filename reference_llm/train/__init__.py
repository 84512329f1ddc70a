"""Pretraining: the training step and loop, optimizer and schedule, checkpoints, speed and metrics.

    python -m reference_llm.train --config FILE [section.key=value ...] [--resume]

`pretrain.py` is that command (`Trainer`); `loop.py` is the loop every stage shares (pretraining, SFT,
DPO); `checkpoint.py` the on-disk format; `optim.py` AdamW and the cosine schedule; `perf.py` devices,
dtypes and MFU; `metrics.py` the JSONL log and the live line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reference_llm._lazy import lazy_exports

if TYPE_CHECKING:
    from reference_llm.train.pretrain import (
        Trainer,
        evaluate,
        main,
        matmul_peak,
        padded_vocab_size,
        seed_everything,
        train_step,
    )

__getattr__, __all__ = lazy_exports(__name__, {
    "Trainer": "pretrain", "evaluate": "pretrain", "main": "pretrain", "matmul_peak": "pretrain",
    "padded_vocab_size": "pretrain", "seed_everything": "pretrain", "train_step": "pretrain",
})
