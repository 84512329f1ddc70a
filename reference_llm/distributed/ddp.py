"""DistributedDataParallel: every rank holds the whole model and optimizer; gradients are averaged.

Each process runs forward and backward on its own micro-batch; DDP's backward hooks all-reduce
(average) gradients in buckets while backward is still running (Li et al. 2020, "PyTorch Distributed:
Experiences on Accelerating Data Parallel Training"). After that every rank holds the same gradient,
so the optimizer step is the single-device one and the weights stay identical without further
communication. That also makes checkpoints trivial: any rank's model and optimizer are complete.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from reference_llm.config import RunConfig
from reference_llm.distributed import runtime
from reference_llm.distributed.base import (
    OptimizerState,
    SingleDeviceEngine,
    build_model,
    load_optimizer_state_by_name,
    optimizer_state_by_name,
)
from reference_llm.distributed.parallelize import ModelFactory
from reference_llm.train.checkpoint import load_weights, unique_state_dict
from reference_llm.train.optim import OptimizerFactory


class _ModelDDP(DistributedDataParallel):
    """DDP whose attribute lookups fall through to the wrapped model (`engine.model.num_params()`), as
    they do through DeepSpeed's engine and FSDP2's in-place wrapping, so the loop never unwraps."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not set yet: still inside DDP's constructor
                raise
            return getattr(self.module, name)


class DDPEngine(SingleDeviceEngine):
    """One device per process, gradients all-reduced by DDP. The optimizer step (`step`) is the
    single-device engine's: after DDP's averaging every rank sees the same gradient."""

    def __init__(
        self, run_config: RunConfig, model: nn.Module | ModelFactory, make_optimizer: OptimizerFactory
    ) -> None:
        info = runtime.setup(run_config.distributed.strategy, run_config.train.device)
        self.rank, self.world_size, self.device = info.rank, info.world_size, info.device
        # The unwrapped model: its names have no "module." prefix.
        self.module = build_model(model, run_config).to(self.device)
        self.ddp = _ModelDDP(self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = self.ddp
        self.optimizer = make_optimizer(self.module)

    def accumulating(self, is_last_micro_step: bool) -> contextlib.AbstractContextManager:
        # no_sync: gradients of non-final micro-steps accumulate locally; the last backward
        # all-reduces the accumulated sum once.
        return contextlib.nullcontext() if is_last_micro_step else self.ddp.no_sync()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return unique_state_dict(self.module)

    def optimizer_state(self) -> OptimizerState:
        return optimizer_state_by_name(self.optimizer, self.module)

    def load_state(self, weights: dict[str, torch.Tensor], optimizer_state: OptimizerState | None) -> None:
        # Every rank loads the same consolidated tensors, so replicas stay identical.
        load_weights(self.module, weights)
        if optimizer_state is not None:
            load_optimizer_state_by_name(self.optimizer, self.module, optimizer_state)

    def barrier(self) -> None:
        runtime.barrier()

    def shutdown(self) -> None:
        runtime.shutdown()
