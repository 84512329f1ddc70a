"""The Engine interface the training loop drives, the single-device engine, and `build_engine`.

The loop never branches on the parallel strategy. It calls, in order:

    engine = build_engine(run_config, model, make_optimizer)
    with engine.accumulating(is_last_micro_step):     # once per micro-batch
        loss = engine.model(x, y)[1] / grad_accum
        engine.backward(loss)
    grad_norm = engine.step(lr, grad_clip)             # once per optimizer step
    weights, opt = engine.full_state_dict(), engine.optimizer_state()   # on every rank
    engine.load_state(weights, opt)                    # on every rank, when resuming
    engine.barrier(); engine.shutdown()

Engines with `shards_checkpoints` (FSDP2, ZeRO) also save and resume without gathering:
`engine.sharded_state()` (this rank's pieces) and `engine.load_sharded(checkpoint)`
(train/sharded_checkpoint.py).

Conventions every engine follows (they complete docs/architecture.md, which they do not change):

- Constructor: `EngineClass(run_config, model, make_optimizer)`. `model` is an unwrapped
  `Transformer` on the CPU, identically initialised on every rank, or a factory that builds one
  (then sharded engines build it deferred: parallelize.py, deferred_init.py); the engine applies
  activation checkpointing, moves it to its device, wraps it, then calls `make_optimizer(module)`
  with the module whose `named_parameters()` carry the model's own names (no "module." prefix).
- Weights: `full_state_dict()` maps the model's parameter names to full tensors, each tied tensor
  once under its first name (so `lm_head.weight` is absent when tied to `tok_emb.weight`); only
  rank 0's copy need be real.
- Optimizer state, consolidated by name (`OptimizerState`):
      {"state": {param_name: {"step": Tensor, "exp_avg": Tensor, "exp_avg_sq": Tensor}},
       "param_groups": [{"params": [param_name, ...], "weight_decay": 0.1, ...}, ...]}
  `optimizer_state_by_name` / `load_optimizer_state_by_name` convert to and from PyTorch's
  index-keyed form for engines whose optimizer sees the model's own parameters.
"""

from __future__ import annotations

import contextlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from reference_llm.config import RunConfig, Strategy
from reference_llm.distributed.parallelize import ModelFactory, apply_activation_checkpointing
from reference_llm.distributed.runtime import return_freed_memory
from reference_llm.errors import CheckpointError, DistributedError
from reference_llm.train.checkpoint import load_weights, unique_state_dict
from reference_llm.train.checkpoint_checks import check_optimizer_state
from reference_llm.train.optim import OptimizerFactory
from reference_llm.train.perf import keep_freed_memory, resolve_device
from reference_llm.train.sharded_checkpoint import ShardedCheckpoint, ShardedState

OptimizerState = dict[str, Any]


class Engine(ABC):
    """Owns the model's placement, gradient synchronisation, optimizer and consolidated state."""

    model: nn.Module
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs and writes checkpoints."""
        return self.rank == 0

    # Ranks that hold one model replica between them (tensor x pipeline parallel degree); they are
    # consecutive ranks and must see the same data.
    model_parallel: int = 1

    @property
    def dp_rank(self) -> int:
        """Which data-parallel replica this rank belongs to: what it takes its share of the data by."""
        return self.rank // self.model_parallel

    @property
    def dp_size(self) -> int:
        """How many data-parallel replicas there are (the batch is split this many ways)."""
        return self.world_size // self.model_parallel

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate `loss`, already divided by the number of micro-steps."""

    def accumulating(self, is_last_micro_step: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-step's forward and backward; data-parallel engines skip the gradient
        all-reduce unless `is_last_micro_step`."""
        return contextlib.nullcontext()

    @abstractmethod
    def step(self, lr: float, grad_clip: float) -> float:
        """Set the learning rate, clip the global gradient norm to `grad_clip` (0: no clipping), step
        the optimizer and zero the gradients. Returns the norm before clipping."""

    @abstractmethod
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Consolidated weights by parameter name (collective: call on every rank)."""

    @abstractmethod
    def optimizer_state(self) -> OptimizerState:
        """Consolidated optimizer state keyed by parameter name (collective: call on every rank)."""

    @abstractmethod
    def load_state(self, weights: dict[str, torch.Tensor], optimizer_state: OptimizerState | None) -> None:
        """Load consolidated weights and, when given, optimizer state (call on every rank)."""

    # Sharded checkpoints (train/sharded_checkpoint.py): engines that shard the model's state save
    # and load it piece by piece, each rank its own, instead of gathering it on rank 0.
    shards_checkpoints: bool = False

    def sharded_state(self) -> ShardedState:
        """This rank's pieces of the weights and optimizer state, as views (collective-free)."""
        raise NotImplementedError(f"{type(self).__name__} writes consolidated checkpoints")

    def load_sharded(self, checkpoint: ShardedCheckpoint) -> None:
        """Load weights and optimizer state from a sharded checkpoint of any strategy and world size
        (collective: call on every rank)."""
        raise NotImplementedError(f"{type(self).__name__} loads consolidated checkpoints")

    def barrier(self) -> None:
        """Wait for every rank."""

    def shutdown(self) -> None:
        """Release process groups and other resources; the same on every rank."""


class SingleDeviceEngine(Engine):
    """One process, one device: `train.device` ("auto" picks CUDA when there is one)."""

    def __init__(
        self, run_config: RunConfig, model: nn.Module | ModelFactory, make_optimizer: OptimizerFactory
    ) -> None:
        self.device = resolve_device(run_config.train.device)
        self.model = build_model(model, run_config).to(self.device)
        self.optimizer = make_optimizer(self.model)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, lr: float, grad_clip: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        params = [p for p in self.model.parameters() if p.grad is not None]
        # With clipping off, max_norm=inf still returns the norm, which the logs report.
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return unique_state_dict(self.model)

    def optimizer_state(self) -> OptimizerState:
        return optimizer_state_by_name(self.optimizer, self.model)

    def load_state(self, weights: dict[str, torch.Tensor], optimizer_state: OptimizerState | None) -> None:
        load_weights(self.model, weights)
        if optimizer_state is not None:
            load_optimizer_state_by_name(self.optimizer, self.model, optimizer_state)


# ----------------------------------------------------------------------------------------------------
# Consolidated state, by name
# ----------------------------------------------------------------------------------------------------


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, model: nn.Module) -> OptimizerState:
    """PyTorch's optimizer state (keyed by parameter object) re-keyed by parameter name."""
    names = _param_names(model)
    state = {names[id(p)]: dict(s) for p, s in optimizer.state.items()}
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
        for g in optimizer.param_groups
    ]
    return {"state": state, "param_groups": groups}


def load_optimizer_state_by_name(optimizer: torch.optim.Optimizer, model: nn.Module, saved: OptimizerState) -> None:
    """Inverse of `optimizer_state_by_name`; the groups must hold the same parameter names."""
    check_optimizer_state(saved, {name: p.shape for name, p in model.named_parameters()}, "optimizer state")
    names = _param_names(model)
    current = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    stored = [list(g["params"]) for g in saved["param_groups"]]
    if current != stored:
        flat_current = [n for group in current for n in group]
        flat_stored = [n for group in stored for n in group]
        first = next((a for a, b in zip(flat_current, flat_stored) if a != b), None)
        detail = f"first difference at {first!r}" if first else f"{len(flat_stored)} parameters vs {len(flat_current)}"
        raise CheckpointError(f"optimizer state does not match the model's parameter groups ({detail})")
    index = {name: i for i, name in enumerate(n for group in current for n in group)}
    torch_form = {
        "state": {index[name]: s for name, s in saved["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in saved["param_groups"]],
    }
    optimizer.load_state_dict(torch_form)


# Group entries that describe how the optimizer runs on this machine, not the optimisation itself.
IMPLEMENTATION_FLAGS = frozenset({"foreach", "fused", "capturable", "differentiable"})


def restore_group_settings(
    groups: list[dict[str, Any]], current: list[list[str]], saved: list[dict[str, Any]], source: str
) -> None:
    """Copy a checkpoint's optimizer hyper-parameters (weight decay, betas, ...; the learning rate is
    set again every step) into `groups`, whose parameter names by group are `current`."""
    stored = [list(g["params"]) for g in saved]
    if stored != current:
        raise CheckpointError(
            f"{source}: optimizer state does not match the model's parameter groups "
            f"({sum(map(len, stored))} parameters in {len(stored)} groups in the checkpoint, "
            f"{sum(map(len, current))} in {len(current)} here)"
        )
    for group, saved_group in zip(groups, saved):
        for key, value in saved_group.items():
            if key != "params" and key in group and key not in IMPLEMENTATION_FLAGS:
                group[key] = value


def create_adam_state(
    optimizer: torch.optim.Optimizer, params: dict[str, nn.Parameter], state_keys: list[str], steps: dict[str, float]
) -> None:
    """Give each parameter AdamW state to load into (a torch optimizer creates it at its first step):
    zeroed moments shaped like the parameter (sharded like it, for DTensors) and the step count.
    Fused and capturable optimizers keep the step on the parameter's device, the others on the CPU."""
    on_device = any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
    for name, param in params.items():
        state = optimizer.state[param]
        for key in state_keys:
            if key not in state:
                state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] = torch.tensor(
            steps.get(name, 0.0), dtype=torch.float32, device=param.device if on_device else "cpu"
        )


def group_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[list[str]]:
    names = _param_names(model)
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]


# ----------------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------------

# Strategies that shard the model's state over ranks (and checkpoint it in shards).
SHARDED = frozenset({Strategy.FSDP, Strategy.ZERO1, Strategy.ZERO2, Strategy.ZERO3})

# strategy -> (module, class); imported only when chosen, so that a CPU install without DeepSpeed works.
ENGINES: dict[str, tuple[str, str]] = {
    Strategy.SINGLE: (__name__, "SingleDeviceEngine"),
    Strategy.DDP: ("reference_llm.distributed.ddp", "DDPEngine"),
    Strategy.FSDP: ("reference_llm.distributed.fsdp", "FSDPEngine"),
    **{s: ("reference_llm.distributed.zero", "DeepSpeedEngine") for s in Strategy if s.zero_stage},
}


def build_model(model: nn.Module | ModelFactory, run_config: RunConfig) -> nn.Module:
    """For the engines that hold the whole model: `model`, or `model()` for a factory, with the run's
    activation checkpointing applied to its blocks."""
    module = model if isinstance(model, nn.Module) else model()
    apply_activation_checkpointing(module, run_config.train.activation_checkpointing)
    return module


def build_engine(run_config: RunConfig, model: nn.Module | ModelFactory, make_optimizer: OptimizerFactory) -> Engine:
    """The engine for `run_config.distributed.strategy`. `model` is a built model, or a factory
    (`functools.partial(Transformer, config)`) that sharded engines call on the meta device or under
    DeepSpeed's zero.Init, so that no rank ever holds the whole model; the others simply call it.
    Call it with the run's seed set: the weights are then those `factory()` gives in one process."""
    strategy = run_config.distributed.strategy
    if strategy not in ENGINES:
        raise DistributedError(f"distributed.strategy must be one of {', '.join(ENGINES)}; got {strategy!r}")
    module_name, class_name = ENGINES[strategy]
    if run_config.distributed.pp > 1:  # pipeline stages (strategy fsdp, as the config checked) have their own
        module_name, class_name = "reference_llm.distributed.pipeline_parallel", "PipelineEngine"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "deepspeed":
            raise DistributedError(
                f"distributed.strategy={strategy} needs DeepSpeed: pip install 'llmgen[deepspeed]'"
            ) from None
        raise DistributedError(
            f"distributed.strategy={strategy} is not available: module {exc.name} is missing from this installation"
        ) from None
    engine_class: Callable[[RunConfig, nn.Module | ModelFactory, OptimizerFactory], Engine]
    engine_class = getattr(module, class_name)
    on_cpu = resolve_device(run_config.train.device).type == "cpu"
    if on_cpu and strategy in SHARDED:
        # Before anything large is allocated: a sharded rank's memory should follow its tensors.
        return_freed_memory()
    engine = engine_class(run_config, model, make_optimizer)
    if on_cpu and strategy not in SHARDED:
        keep_freed_memory()  # without it every CPU training step page-faults its activations back in
    return engine
