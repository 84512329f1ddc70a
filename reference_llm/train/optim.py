"""AdamW with decay/no-decay parameter groups, and the warmup + cosine learning-rate schedule.

Both are independent of pretraining data, so fine-tuning (SFT, DPO) builds its optimizer the same way:

    optimizer = build_optimizer(model, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = CosineSchedule(lr=3e-4, min_lr=3e-5, warmup_steps=100, max_steps=2000)
    for group in optimizer.param_groups: group["lr"] = schedule(step)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from reference_llm.config import TrainConfig

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups, as in nanoGPT: every tensor of 2 or more dimensions (matmul weights and
    embeddings) is decayed; vectors (biases, norm gains) are not, since shrinking them towards zero
    only fights the normalisation they implement."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():  # shared (tied) tensors are listed once
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8
) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019, decoupled weight decay) over `param_groups(model)`, fused
    where PyTorch has a fused kernel for the parameters (see `_fusable`)."""
    return torch.optim.AdamW(
        param_groups(model, weight_decay),
        lr=lr,
        betas=betas,
        eps=eps,
        fused=True if _fusable(list(model.parameters())) else None,
    )


def _fusable(params: list[torch.Tensor]) -> bool:
    """The fused AdamW kernel updates all parameters in one pass. It exists for CUDA tensors and, since
    PyTorch 2.4, for CPU ones, where it measured 3-4x faster than the default for-each update on
    this project's CPUs. Sharded (DTensor) parameters on the CPU keep the for-each path."""
    if all(p.device.type == "cuda" for p in params):
        return True
    return all(p.device.type == "cpu" and type(p.data) is torch.Tensor for p in params)


def optimizer_factory(train: TrainConfig) -> OptimizerFactory:
    """What engines receive: a function that builds the optimizer once they have placed/wrapped the
    model (FSDP2 and DeepSpeed must build it after sharding)."""

    def make(model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, lr=train.lr, weight_decay=train.weight_decay, betas=(train.beta1, train.beta2))

    return make


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warmup to `lr`, then a half cosine down to `min_lr` at `max_steps`, flat after that.

    Warmup (Goyal et al. 2017) keeps Adam's first, badly estimated updates small; the cosine decay is
    SGDR's (Loshchilov & Hutter 2017) without restarts. `step` counts optimizer steps from 0; the
    formula matches nanoGPT's `get_lr`, so that its recipe can be reproduced exactly.
    """

    lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int

    @classmethod
    def from_config(cls, train: TrainConfig) -> CosineSchedule:
        return cls(lr=train.lr, min_lr=train.min_lr, warmup_steps=train.warmup_steps, max_steps=train.max_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / (self.warmup_steps + 1)
        if step >= self.max_steps:
            return self.min_lr
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.lr - self.min_lr)
