"""DeepSpeed ZeRO stages 1, 2 and 3 behind the Engine interface.

ZeRO (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models") removes the redundancy of data parallelism in three steps: stage 1 partitions the optimizer
state (fp32 master weights, Adam moments) across ranks, stage 2 also the gradients, stage 3 also the
parameters themselves (gathered layer by layer around their use). `offload` moves the optimizer state
(and, at stage 3, the parameters) to CPU memory (ZeRO-Offload, Ren et al. 2021).

We hand DeepSpeed the training loop's own AdamW (its groups in DeepSpeed's CPU Adam when offloading) and
the JSON config from `distributed.deepspeed_config`, checked against the run config first. Three things
differ from the PyTorch engines, and are handled here so that the loop does not branch:

- Loss scaling: `DeepSpeedEngine.backward` divides the loss by `gradient_accumulation_steps` by default;
  the loop has already done so, so we call it with `scale_wrt_gas=False`.
- Step boundaries: DeepSpeed decides itself when a backward is the last of an accumulation window; we
  tell it instead (`set_gradient_accumulation_boundary`), from the loop's `accumulating(is_last)`.
- State: the fp32 master weights and Adam moments live in flat per-rank partitions. `full_state_dict`
  and `optimizer_state` gather them per parameter with DeepSpeed's `safe_get_full_*` helpers, and
  `load_state` scatters them back with `safe_set_full_*`, so checkpoints are the same consolidated,
  by-name files every strategy writes. Loading into a fresh engine also needs the flat partitions'
  optimizer state to exist before the first step; `_ensure_state` creates it. That part reads DeepSpeed
  attributes that are not public API (the partitions' names, the stage 1-2 state map), written against
  DeepSpeed 0.19 and exercised for every stage by tests/distributed/.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn

from reference_llm.config import RunConfig
from reference_llm.distributed import ds_config, runtime
from reference_llm.distributed.base import Engine, OptimizerState, build_model, restore_group_settings
from reference_llm.distributed.deferred_init import record_init
from reference_llm.distributed.parallelize import ModelFactory, apply_activation_checkpointing
from reference_llm.errors import CheckpointError, DistributedError
from reference_llm.train.checkpoint import load_weights
from reference_llm.train.checkpoint_checks import check_optimizer_state
from reference_llm.train.optim import OptimizerFactory
from reference_llm.train.perf import resolve_dtype
from reference_llm.train.sharded_checkpoint import Piece, ShardedCheckpoint, ShardedState, model_key, optim_key

INSTALL_HINT = "pip install 'llmgen[deepspeed]'"
# A parameter's range on this rank: (name, start in the flattened parameter, length, {None: fp32 master,
# state key: AdamW moment}), see DeepSpeedEngine._local_partitions.
Partition = tuple[str, int, int, dict[str | None, torch.Tensor]]


def import_deepspeed(device: torch.device) -> ModuleType:
    """Import DeepSpeed for `device`. DeepSpeed picks its accelerator once, at import, from
    DS_ACCELERATOR (else by probing for CUDA), so this must run before anything imports it."""
    os.environ.setdefault("DS_ACCELERATOR", device.type)
    try:
        deepspeed = importlib.import_module("deepspeed")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "deepspeed":
            raise DistributedError(
                f"the ZeRO strategies need DeepSpeed, which is not installed: {INSTALL_HINT}"
                f" (or use distributed.strategy=fsdp, which shards the same way)"
            ) from None
        raise
    from deepspeed.accelerator import get_accelerator

    chosen = get_accelerator().device_name()
    if chosen != device.type:
        raise DistributedError(
            f"DeepSpeed runs on {chosen!r} (DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR')}) "
            f"but train.device resolves to {device.type!r}; set DS_ACCELERATOR={device.type}"
        )
    return deepspeed


class DeepSpeedEngine(Engine):
    def __init__(
        self, run_config: RunConfig, model: nn.Module | ModelFactory, make_optimizer: OptimizerFactory
    ) -> None:
        strategy = run_config.distributed.strategy
        if strategy not in ds_config.STAGES:
            raise DistributedError(f"DeepSpeedEngine runs zero1, zero2 or zero3, not {strategy!r}")
        info = runtime.process_info(strategy, run_config.train.device)
        self.rank, self.world_size, self.device = info.rank, info.world_size, info.device
        self.stage = ds_config.STAGES[strategy]
        self.grad_clip = run_config.train.grad_clip
        # Configuration first: a disagreement is reported before any process waits on another.
        path = Path(run_config.distributed.deepspeed_config)
        config = ds_config.load(path)
        bf16 = resolve_dtype(run_config.train.dtype, self.device) == torch.bfloat16
        problems = ds_config.disagreements(config, run_config, self.world_size, bf16, name=str(path))
        if problems:
            more = f"; {len(problems) - 1} more disagreement(s)" if len(problems) > 1 else ""
            raise DistributedError(
                f"{problems[0]} (WORLD_SIZE={self.world_size}){more}; fix {path} or "
                f"configs/train.toml, then run `llmgen check`"
            )
        config = ds_config.complete(config, run_config, self.world_size)
        deepspeed = import_deepspeed(self.device)
        runtime.init_process_group(info)  # deepspeed.comm adopts this torch.distributed group
        self._deepspeed = deepspeed

        if self.stage == 3 and not isinstance(model, nn.Module):
            self.module, optimizer = self._build_partitioned(model, make_optimizer, config, run_config)
        else:
            self.module = build_model(model, run_config).to(self.device)
            optimizer = make_optimizer(self.module)
        self.offload = run_config.distributed.offload != "none"
        if self.offload:
            optimizer = _cpu_adam(optimizer)
        # Parameter names per optimizer group, taken now: DeepSpeed replaces the groups' tensors with
        # its flat partitions.
        names = {id(p): name for name, p in self.module.named_parameters()}
        self._group_names = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
        self._base = optimizer  # DeepSpeed steps this object on its flat fp32 partitions
        # `ds` is DeepSpeed's engine: the module the loop calls, and the object that runs backward and step.
        self.ds, self._zero, _, _ = deepspeed.initialize(model=self.module, optimizer=optimizer, config=config)
        self.model = self.ds
        # Until the loop says otherwise every backward ends a step (grad_accum=1 needs no context).
        self.ds.set_gradient_accumulation_boundary(True)

    def _build_partitioned(
        self, factory: ModelFactory, make_optimizer: OptimizerFactory, config: dict[str, Any], run_config: RunConfig
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """ZeRO-3's deferred initialisation: build the model under `deepspeed.zero.Init`, which partitions
        each module's parameters as soon as its constructor returns (so a rank holds at most one full
        module at a time), then give every partition the value a single process would have.

        zero.Init alone does not give those values: the constructor's draws after a module is built
        (our `_init_weights`) meet partitioned, empty tensors. So the model is first recorded on the
        meta device (deferred_init.py), and each parameter is replayed in full, one at a time, and cut
        to this rank's partition. The optimizer's groups are built on the recorded model, whose
        parameters still have their shapes (the groups depend on them), then pointed at the
        partitioned parameters of the same names."""
        recorded, record = record_init(factory)
        # zero.Init partitions over deepspeed.comm's world, which must adopt our process group first.
        self._deepspeed.init_distributed(dist_backend=runtime.backend_for(self.device), verbose=False)
        after_init = torch.get_rng_state()  # where the single-process construction leaves the generator
        # No dtype argument: zero.Init then takes it from the config (bf16 or fp32). Given one, DeepSpeed
        # 0.19 ignores it on a CPU accelerator and picks bf16 (an operator-precedence slip in _set_dtype).
        with self._deepspeed.zero.Init(config_dict_or_path=config):
            module = factory()
        torch.set_rng_state(after_init)
        with torch.no_grad():
            for name in record.tensors:
                full = record.value(name)
                module_name, _, attr = name.rpartition(".")
                target = getattr(module.get_submodule(module_name), attr)
                if hasattr(target, "ds_tensor"):  # a partitioned parameter: rank r holds [r*size, (r+1)*size)
                    part = target.ds_tensor
                    start = self.rank * part.numel()
                    count = max(0, min(part.numel(), full.numel() - start))
                    part[:count].copy_(full.reshape(-1)[start : start + count])
                else:  # buffers are not partitioned
                    target.copy_(full)
        apply_activation_checkpointing(module, run_config.train.activation_checkpointing)
        optimizer = make_optimizer(recorded)
        partitioned = dict(module.named_parameters())
        by_id = {id(p): partitioned[name] for name, p in recorded.named_parameters()}
        for group in optimizer.param_groups:
            group["params"] = [by_id[id(p)] for p in group["params"]]
        return module, optimizer

    # -- training ------------------------------------------------------------------------------------

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss, scale_wrt_gas=False)  # the loop already divided by grad_accum

    def accumulating(self, is_last_micro_step: bool) -> contextlib.AbstractContextManager:
        # ZeRO reduces (stage 1) or reduce-scatters (stages 2, 3) accumulated gradients at the boundary.
        self.ds.set_gradient_accumulation_boundary(is_last_micro_step)
        return contextlib.nullcontext()

    def step(self, lr: float, grad_clip: float) -> float:
        if grad_clip != self.grad_clip:
            # DeepSpeed clips inside its step with the value from the JSON config, checked at start-up.
            raise DistributedError(
                f"grad_clip={grad_clip} differs from train.grad_clip={self.grad_clip} that "
                f"the DeepSpeed config was checked against"
            )
        for group in self._base.param_groups:
            group["lr"] = lr
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    # -- consolidated state --------------------------------------------------------------------------

    def _flat_partitions(self) -> list[torch.Tensor]:
        """This rank's flat fp32 master partitions, one per (sub-)group, as the base optimizer sees them:
        named differently by ZeRO-3, ZeRO-1/2, and the BF16 optimizer that ZeRO-1 uses when the config
        asks for fp32 gradient accumulation."""
        for attr in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
            if hasattr(self._zero, attr):
                return list(getattr(self._zero, attr))
        raise DistributedError(
            f"DeepSpeed optimizer {type(self._zero).__name__} is not supported by "
            f"reference_llm's checkpoints; use the generated configs/deepspeed.json"
        )

    def _state_keys(self) -> tuple[list[str], dict[str, torch.Tensor]]:
        """Per-element state keys (Adam's moments) and scalar ones (step), from the first partition."""
        flat = self._flat_partitions()[0]
        state = self._base.state.get(flat, {})
        per_element = [k for k, v in state.items() if torch.is_tensor(v) and v.numel() == flat.numel()]
        scalars = {k: v for k, v in state.items() if k not in per_element}
        return per_element, scalars

    # Gathering is collective, one parameter at a time; only rank 0 keeps the result (in CPU memory), as
    # FSDP2's full state dicts do, so that a node's ranks do not each hold a copy of the whole model.

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        get_fp32 = self._deepspeed.utils.safe_get_full_fp32_param
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for name, tensor in self.module.state_dict(keep_vars=True).items():
            if id(tensor) in seen:  # a tied weight: once, under its first name (as checkpoint.unique_state_dict)
                continue
            seen.add(id(tensor))
            if isinstance(tensor, nn.Parameter):
                tensor = get_fp32(tensor)  # the fp32 master copy, not the bf16 working one
            if self.is_main:
                out[name] = tensor.detach().to("cpu", copy=True)
        return out

    def optimizer_state(self) -> OptimizerState:
        get_state = self._deepspeed.utils.safe_get_full_optimizer_state
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": list(names)}
            for g, names in zip(self._base.param_groups, self._group_names)
        ]
        per_element, scalars = self._state_keys()
        state: dict[str, dict[str, torch.Tensor]] = {}
        if per_element:  # empty before the first optimizer step, as with a fresh torch optimizer
            self._link_state_fragments()
            for name, param in self.module.named_parameters():
                moments = {key: get_state(param, key) for key in per_element}
                if self.is_main:
                    state[name] = {
                        **{k: torch.tensor(float(v)) for k, v in scalars.items()},  # CPU Adam: int
                        **{k: v.detach().to("cpu", copy=True) for k, v in moments.items()},
                    }
        return {"state": state, "param_groups": groups}

    def load_state(self, weights: dict[str, torch.Tensor], optimizer_state: OptimizerState | None) -> None:
        params = list(self.module.parameters())
        # The working copy of the weights (bf16 or fp32) that forward uses; at stage 3 it is partitioned,
        # so gather it, write it on every rank, and let DeepSpeed re-partition it.
        gather = (
            self._deepspeed.zero.GatheredParameters(params, modifier_rank=0)
            if self.stage == 3
            else contextlib.nullcontext()
        )
        with gather:
            load_weights(self.module, weights)
        # The fp32 master copy the optimizer updates: straight from the checkpoint, with no bf16 rounding.
        set_fp32 = self._deepspeed.utils.safe_set_full_fp32_param
        for name, param in self.module.named_parameters():
            set_fp32(param, weights[name].to(self.device, torch.float32))
        if optimizer_state is not None:
            self._load_optimizer_state(optimizer_state)

    def _load_optimizer_state(self, saved: OptimizerState) -> None:
        # Full shapes: under ZeRO-3 a parameter holds only its partition and keeps the full shape in ds_shape.
        full_shapes = {name: getattr(p, "ds_shape", p.shape) for name, p in self.module.named_parameters()}
        check_optimizer_state(saved, full_shapes, "optimizer state")
        restore_group_settings(self._base.param_groups, self._group_names, saved["param_groups"], "checkpoint")
        if not saved["state"]:
            return
        names = [name for name, _ in self.module.named_parameters()]
        missing = [n for n in names if n not in saved["state"]]
        if missing:
            raise CheckpointError(f"optimizer state has no entry for parameter {missing[0]!r}")
        sample = saved["state"][names[0]]
        per_element = [k for k, v in sample.items() if v.dim() > 0]
        self._ensure_state(per_element, {k: v for k, v in sample.items() if v.dim() == 0})
        set_state = self._deepspeed.utils.safe_set_full_optimizer_state
        for name, param in self.module.named_parameters():
            for key in per_element:
                set_state(param, saved["state"][name][key].to(self.device, torch.float32), key)

    def _ensure_state(self, per_element: list[str], scalars: dict[str, torch.Tensor]) -> None:
        """Give every flat partition optimizer state to write into (a fresh torch optimizer creates it
        lazily, at its first step), with the checkpoint's scalars (Adam's step count)."""
        # Fused and capturable torch optimizers keep the step count on the parameters' device; DeepSpeed's
        # CPU Adam keeps it as a Python int.
        on_device = any(g.get("fused") or g.get("capturable") for g in self._base.param_groups)
        for flat in self._flat_partitions():
            state = self._base.state[flat]
            for key in per_element:
                if key not in state:
                    state[key] = torch.zeros_like(flat)
            for key, value in scalars.items():
                if self.offload:
                    state[key] = int(value)
                else:
                    state[key] = value.to(flat.device if on_device else "cpu", torch.float32).clone()
        self._link_state_fragments()

    def _link_state_fragments(self) -> None:
        """At stages 1-2, map each parameter to its slice of the flat optimizer state, which the
        `safe_*_optimizer_state` helpers read through. DeepSpeed 0.19 builds that map once, after the
        first group's first step, which leaves the other groups (our no-decay group) unmapped; so we
        rebuild it for every group before each use. Stage 3 looks slices up directly."""
        if hasattr(self._zero, "_lazy_init_hp_params_optimizer_state"):
            self._zero._hp_optimizer_states_linked = False
            self._zero._lazy_init_hp_params_optimizer_state()

    # -- sharded checkpoints ---------------------------------------------------------------------------

    shards_checkpoints = True

    def _local_partitions(self, keys: list[str]) -> list[Partition]:
        """For each parameter: (name, where this rank's range starts in the flattened parameter, its
        length, {None: fp32 master, state key: moment} over that range or, at stage 3, over the whole
        padded partition, of which the first `length` elements are the parameter's)."""
        out: list[Partition] = []
        utils = self._deepspeed.utils
        params: dict[str, Any] = dict(self.module.named_parameters())  # with DeepSpeed's attributes
        for name, param in params.items():
            views: dict[str | None, torch.Tensor]
            if self.stage == 3:  # partition r of every parameter: elements [r·size, (r+1)·size)
                size = param.ds_tensor.numel()
                start = self.rank * size
                count = max(0, min(size, param.ds_numel - start))
                views = {
                    None: utils.safe_get_local_fp32_param(param),
                    **{key: utils.safe_get_local_optimizer_state(param, key) for key in keys},
                }
            else:  # a slice of the flat buffer: this rank's fragment of the parameter, if any
                fragment = param._hp_mapping
                if fragment is None:
                    out.append((name, 0, 0, {}))
                    continue
                start, count = fragment.lp_fragment_address.start, fragment.lp_fragment_address.numel
                views = {None: fragment.hp_fragment, **{key: fragment.get_optim_state_fragment(key) for key in keys}}
            out.append((name, start, count, views))
        return out

    def sharded_state(self) -> ShardedState:
        """This rank's range of each parameter's fp32 master copy and AdamW moments."""
        per_element, scalars = self._state_keys()
        if per_element:
            self._link_state_fragments()
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": list(names)}
            for g, names in zip(self._base.param_groups, self._group_names)
        ]
        steps = {name: float(scalars["step"]) for name in self._names()} if "step" in scalars else {}
        return self._sharded(self._local_partitions(per_element), per_element, groups, steps)

    def _sharded(
        self, partitions: list[Partition], keys: list[str], groups: list[dict[str, Any]], steps: dict[str, float]
    ) -> ShardedState:
        shapes = {}
        for name, param in self.module.named_parameters():
            full = tuple(getattr(param, "ds_shape", param.shape))
            shapes[model_key(name)] = full
            shapes.update({optim_key(name, key): full for key in keys})
        pieces: dict[str, list[Piece]] = {key: [] for key in shapes}
        for name, start, count, views in partitions:
            for key, view in views.items():
                target = model_key(name) if key is None else optim_key(name, key)
                pieces[target] = [Piece(start, view.reshape(-1)[:count])]
        return ShardedState(pieces, shapes, groups, steps)

    def load_sharded(self, checkpoint: ShardedCheckpoint) -> None:
        shapes = {name: tuple(getattr(p, "ds_shape", p.shape)) for name, p in self.module.named_parameters()}
        checkpoint.check_layout(shapes, f"this run: zero{self.stage} on {self.world_size} rank(s)")
        manifest = checkpoint.manifest
        keys = manifest.state_keys
        if keys:
            restore_group_settings(
                self._base.param_groups, self._group_names, manifest.param_groups, str(checkpoint.path)
            )
            step = next(iter(manifest.steps.values()), 0.0)
            self._ensure_state(keys, {"step": torch.tensor(step)})
        partitions = self._local_partitions(keys)
        targets = self._sharded(partitions, keys, [], {}).pieces  # fp32 masters and moments: this rank's ranges
        # The working copy forward uses (bf16 or fp32): whole at stages 1-2, where every rank holds it;
        # at stage 3 only parameters kept whole on every rank ("persistent" small ones) need it.
        for name, param in self.module.named_parameters():
            if self.stage < 3 or getattr(param, "ds_persist", False):
                targets[model_key(name)].append(Piece(0, param.data.view(-1)))
        checkpoint.load(targets)
        if self.stage == 3:
            self._store_partitions(partitions)

    @torch.no_grad()
    def _store_partitions(self, partitions: list[Partition]) -> None:
        """After loading ZeRO-3 masters and moments: hand them to DeepSpeed's setters (its getters
        may have returned copies, e.g. of offloaded state) and copy the masters into the partitioned
        working copy that forward gathers."""
        utils = self._deepspeed.utils
        params: dict[str, Any] = dict(self.module.named_parameters())
        for name, _, count, views in partitions:
            param = params[name]
            for key, value in views.items():
                if key is None:
                    utils.safe_set_local_fp32_param(param, value)
                    param.ds_tensor[:count].copy_(value[:count])
                else:
                    utils.safe_set_local_optimizer_state(param, value, key)

    def _names(self) -> list[str]:
        return [name for name, _ in self.module.named_parameters()]

    # -- lifecycle ------------------------------------------------------------------------------------

    def barrier(self) -> None:
        runtime.barrier()

    def shutdown(self) -> None:
        self.ds.destroy()
        runtime.shutdown()


def _cpu_adam(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The loop's AdamW groups and hyper-parameters, in DeepSpeed's CPU Adam: ZeRO-Offload steps the
    optimizer on the CPU and refuses a torch optimizer there (it would be several times slower)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    defaults: dict[str, Any] = optimizer.defaults
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
    return DeepSpeedCPUAdam(
        groups,
        lr=defaults["lr"],
        betas=defaults["betas"],
        eps=defaults["eps"],
        weight_decay=defaults["weight_decay"],
        adamw_mode=True,
    )
