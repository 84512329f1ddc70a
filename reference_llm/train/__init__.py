"""Training: the loop every stage shares, pretraining, optimizer and schedule, checkpoints, speed and metrics.

    python -m reference_llm.train --config FILE [section.key=value ...] [--resume]

`loop.py` is the loop every stage shares (pretraining, SFT, DPO) with its step (`train_step`) and
evaluation; `pretrain.py` is the pretraining command (`Trainer`); `checkpoint.py` the on-disk format;
`optim.py` AdamW and the cosine schedule; `perf.py` devices, dtypes and MFU; `metrics.py` the JSONL log
and the live line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reference_llm._lazy import lazy_exports

if TYPE_CHECKING:  # `X as X` marks a re-export for the linters (__all__ is built at run time)
    from reference_llm.train.loop import LoopState as LoopState
    from reference_llm.train.loop import evaluate as evaluate
    from reference_llm.train.loop import fit as fit
    from reference_llm.train.loop import matmul_peak as matmul_peak
    from reference_llm.train.loop import padded_vocab_size as padded_vocab_size
    from reference_llm.train.loop import seed_everything as seed_everything
    from reference_llm.train.loop import train_step as train_step
    from reference_llm.train.pretrain import Trainer as Trainer
    from reference_llm.train.pretrain import main as main

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "LoopState": "loop",
        "evaluate": "loop",
        "fit": "loop",
        "matmul_peak": "loop",
        "padded_vocab_size": "loop",
        "seed_everything": "loop",
        "train_step": "loop",
        "Trainer": "pretrain",
        "main": "pretrain",
    },
)
