"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state sharded.

Each rank keeps 1/world of every parameter (a DTensor shard along dim 0). Before a block runs, its
shards are all-gathered into full weights, used and freed again; after its backward, gradients are
reduce-scattered so each rank holds the averaged gradient of its own shard, and the optimizer updates
only that shard (the ZeRO-3 scheme of Rajbhandari et al. 2020, as implemented in PyTorch FSDP, Zhao et
al. 2023). Sharding one transformer block at a time bounds the memory of full weights to about one
block, and lets the all-gather of the next block overlap this block's compute.

With `distributed.tp` > 1 the ranks form a 2-D mesh ("dp", "tp"): tensor parallelism
(tensor_parallel.py) splits each block over "tp", and FSDP2 shards the result over "dp", so every
parameter is a DTensor sharded on both dimensions (as torchtitan lays out Llama). Ranks that share a
"dp" index see the same data.

Mixed precision is FSDP's `MixedPrecisionPolicy`: with bf16, blocks compute in bf16 while the sharded
parameters, the gradient reduction and the optimizer stay in fp32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from reference_llm.config import RunConfig, check_parallel_layout
from reference_llm.distributed import runtime
from reference_llm.distributed.base import (
    OptimizerState,
    SingleDeviceEngine,
    create_adam_state,
    group_names,
    optimizer_state_by_name,
    restore_group_settings,
)
from reference_llm.distributed.deferred_init import record_init
from reference_llm.distributed.parallelize import ModelFactory, materialize, parallelize
from reference_llm.distributed.tensor_parallel import (
    FusedRows,
    clip_grad_norm,
    from_tp_rows,
    fused_rows,
    to_tp_rows,
)
from reference_llm.errors import DistributedError
from reference_llm.train.checkpoint import check_weight_shapes
from reference_llm.train.checkpoint_checks import check_optimizer_state
from reference_llm.train.optim import OptimizerFactory
from reference_llm.train.perf import resolve_dtype
from reference_llm.train.sharded_checkpoint import Piece, ShardedCheckpoint, ShardedState, model_key, optim_key

# Consolidated state: gathered in full, moved to the CPU; only rank 0 receives it (so 8 ranks do not
# each hold a full copy). Loading expects the full dict on every rank, as the training loop provides.
_SAVE = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True, strict=True)


class FSDPEngine(SingleDeviceEngine):
    """Sharded model and optimizer. `backward` and `step` are the single-device engine's: the gradients
    are DTensor shards, and `clip_grad_norm_` over them sums squares across ranks, so the norm it clips
    with and returns is the global one."""

    def __init__(
        self, run_config: RunConfig, model: nn.Module | ModelFactory, make_optimizer: OptimizerFactory
    ) -> None:
        if run_config.distributed.offload != "none":
            raise DistributedError(
                f"distributed.offload={run_config.distributed.offload} is for the DeepSpeed "
                f"strategies (zero1, zero2, zero3); use offload=none with strategy=fsdp"
            )
        dist_config = run_config.distributed
        info = runtime.process_info(dist_config.strategy, run_config.train.device)
        # Before joining the process group: a layout that does not fit the launch fails on every rank
        # at once, with nothing left waiting for a peer.
        check_parallel_layout(run_config.model, dist_config.strategy, dist_config.tp, 1, info.world_size)
        runtime.init_process_group(info)
        self.rank, self.world_size, self.device = info.rank, info.world_size, info.device
        self.tp = dist_config.tp
        self.model_parallel = self.tp
        if self.tp > 1:
            # Row-major: the tp ranks of one data-parallel replica are neighbours (on one node, on GPUs).
            mesh = init_device_mesh(self.device.type, (self.dp_size, self.tp), mesh_dim_names=("dp", "tp"))
        else:
            mesh = init_device_mesh(self.device.type, (self.world_size,))
        # Sharded checkpoints address FSDP2's row shards; tensor parallelism also splits columns.
        self.shards_checkpoints = self.tp == 1
        if resolve_dtype(run_config.train.dtype, self.device) == torch.bfloat16:
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        else:
            policy = MixedPrecisionPolicy()
        # Given a factory, the model is built on the meta device (no memory), sharded, and only then
        # allocated: each rank holds its shards, never the whole model (deferred_init.py).
        record = None
        if not isinstance(model, nn.Module):
            model, record = record_init(model)
        self._fused: FusedRows = fused_rows(model) if self.tp > 1 else {}
        if record is None:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in self._fused:
                        param.data = self._to_tp(name, param.data)
        # With a built model there is no model.to(device) first: each fully_shard call moves its own
        # module's tensors to the mesh's device and shards them there.
        parallelize(model, run_config, mesh, policy)
        if record is not None:
            materialize(model, record, self.device, self._to_tp)
        self.model = model  # fully_shard changed its class in place: it is also an FSDPModule now
        # Built after sharding, so the optimizer's state is allocated per shard.
        self.optimizer = make_optimizer(model)

    def step(self, lr: float, grad_clip: float) -> float:
        if self.tp == 1:
            return super().step(lr, grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        norm = clip_grad_norm(list(self.model.parameters()), grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def accumulating(self, is_last_micro_step: bool) -> contextlib.AbstractContextManager:
        # Non-final micro-steps keep unsharded gradients locally; the last one reduce-scatters the sum.
        cast(FSDPModule, self.model).set_requires_gradient_sync(is_last_micro_step)
        return contextlib.nullcontext()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        full = get_model_state_dict(self.model, options=_SAVE)
        aliases = _tied_aliases(self.model)
        kept = {name: cast(torch.Tensor, tensor) for name, tensor in full.items() if name not in aliases}
        return {name: self._from_tp(name, tensor) for name, tensor in kept.items()}

    def optimizer_state(self) -> OptimizerState:
        state = get_optimizer_state_dict(self.model, self.optimizer, options=_SAVE)
        return self._relayout_optimizer_state(state, self._from_tp)

    def load_state(self, weights: dict[str, torch.Tensor], optimizer_state: OptimizerState | None) -> None:
        _check_weights(self.model, weights)
        full: dict[str, Any] = {name: self._to_tp(name, tensor) for name, tensor in weights.items()}
        for alias, first in _tied_aliases(self.model).items():
            full[alias] = full[first]  # state-dict loading expects every name, tied ones included
        set_model_state_dict(self.model, full, options=_LOAD)
        if optimizer_state is not None:
            # DTensor.shape is the full shape, as the consolidated state has it
            check_optimizer_state(
                optimizer_state, {name: p.shape for name, p in self.model.named_parameters()}, "optimizer state"
            )
            optimizer_state = self._relayout_optimizer_state(optimizer_state, self._to_tp)
            set_optimizer_state_dict(self.model, self.optimizer, optimizer_state, options=_LOAD)

    # -- tensor parallelism's fused rows: the model's layout outside, the rank-grouped one inside ------

    def _to_tp(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        sizes = self._fused.get(name)
        return tensor if sizes is None else to_tp_rows(tensor, sizes, self.tp)

    def _from_tp(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        sizes = self._fused.get(name)
        return tensor if sizes is None else from_tp_rows(tensor, sizes, self.tp)

    def _relayout_optimizer_state(
        self, state: OptimizerState, convert: Callable[[str, torch.Tensor], torch.Tensor]
    ) -> OptimizerState:
        """AdamW's moments are laid out like their parameter; the step count is a scalar."""
        if not self._fused or "state" not in state:  # ranks other than 0 receive no consolidated state
            return state
        by_name = {
            name: {key: convert(name, v) if isinstance(v, torch.Tensor) and v.dim() else v for key, v in s.items()}
            for name, s in state["state"].items()
        }
        return {**state, "state": by_name}

    # -- sharded checkpoints ---------------------------------------------------------------------------

    shards_checkpoints = True

    def sharded_state(self) -> ShardedState:
        """Each parameter's local rows, and the same rows of its AdamW moments, as ranges of the
        flattened tensors: rows r0..r1 of a (rows, cols) tensor are elements r0·cols .. r1·cols."""
        self._reshard()
        pieces: dict[str, list[Piece]] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        steps: dict[str, float] = {}
        for name, param in self.model.named_parameters():
            offset = _flat_offset(param)
            shapes[model_key(name)] = tuple(param.shape)
            pieces[model_key(name)] = [Piece(offset, _local(param))]
            for key, value in self.optimizer.state.get(param, {}).items():
                if key == "step":
                    steps[name] = float(value)
                else:
                    shapes[optim_key(name, key)] = tuple(param.shape)
                    pieces[optim_key(name, key)] = [Piece(offset, _local(value))]
        groups = optimizer_state_by_name(self.optimizer, self.model)["param_groups"]
        return ShardedState(pieces, shapes, groups, steps)

    def load_sharded(self, checkpoint: ShardedCheckpoint) -> None:
        self._reshard()
        params = dict(self.model.named_parameters())
        checkpoint.check_layout(
            {name: tuple(p.shape) for name, p in params.items()}, f"this run: fsdp on {self.world_size} rank(s)"
        )
        manifest = checkpoint.manifest
        if manifest.state_keys:
            restore_group_settings(
                self.optimizer.param_groups,
                group_names(self.optimizer, self.model),
                manifest.param_groups,
                str(checkpoint.path),
            )
            create_adam_state(self.optimizer, params, manifest.state_keys, manifest.steps)
        checkpoint.load(self.sharded_state().pieces)

    def _reshard(self) -> None:
        """Put every module's sharded parameters back in place. A forward without a backward (an
        evaluation) leaves the root's gathered, unsharded parameters registered, which are not the
        tensors the optimizer holds."""
        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def barrier(self) -> None:
        runtime.barrier()

    def shutdown(self) -> None:
        runtime.shutdown()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (or a plain tensor), flattened, as a view: loading writes into it."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.detach().view(-1)


def _flat_offset(tensor: torch.Tensor) -> int:
    """Where this rank's rows start in the flattened tensor (FSDP2 shards dim 0 only)."""
    if not isinstance(tensor, DTensor):
        return 0
    if any(not isinstance(p, Shard) or p.dim != 0 for p in tensor.placements if not isinstance(p, Replicate)):
        raise DistributedError(f"sharded checkpoints expect FSDP2's row shards, not {tensor.placements}")
    _, offsets = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    return int(offsets[0]) * math.prod(tensor.shape[1:]) if tensor.dim() else 0


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    """Second names of shared parameters -> the first name (e.g. lm_head.weight -> tok_emb.weight)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _check_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Names and full (unsharded) shapes, with the messages `checkpoint.load_weights` gives a plain model."""
    # DTensor.shape is the full shape
    check_weight_shapes({name: p.shape for name, p in model.named_parameters()}, weights)
