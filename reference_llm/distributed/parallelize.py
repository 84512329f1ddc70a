"""How a model is laid out for training, applied from outside the model (as torchtitan does):
activation checkpointing per block, then FSDP2 sharding per block and root, and deferred
initialisation for sharded runs.

    parallelize(model, run_config, mesh, mp_policy)      # FSDP2: checkpointing, then sharding
    apply_activation_checkpointing(model, mode)          # every other engine: checkpointing only
    materialize(model, record)                           # after sharding a meta-built model

Order matters: tensor parallelism (tensor_parallel.py) splits each block's weights over the mesh's
"tp" dimension, so it comes first (pipeline parallelism cuts the block list in its own engine,
pipeline_parallel.py, which does not shard); checkpointing wraps each block's forward as it will
run; FSDP2 shards last, over the "dp" dimension, one unit per block, so that its all-gathers and
reduce-scatters surround exactly the (possibly recomputed) block.

Activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost") keeps
fewer activations for the backward and recomputes the rest:

- "full": each block keeps only its input; its whole forward runs again during the backward
  (about a third more compute).
- "selective": only the attention core is recomputed (Korthikanti et al. 2022, sec. 5): the score
  matrix, its mask, softmax and dropout, whose memory grows with the square of the context, while
  everything whose recomputation would cost matmul FLOPs is kept. With a fused attention kernel
  (SDPA) there is no score matrix to drop, and selective keeps what no checkpointing keeps.

Both wrap each block's `forward` in `torch.utils.checkpoint` (non-reentrant), in place: the module
tree, hence parameter names, optimizer state and checkpoints, stays the same, and FSDP2's and
DeepSpeed's per-module hooks still run around the block, also when it is recomputed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from reference_llm.config import RunConfig
from reference_llm.distributed.deferred_init import InitRecord
from reference_llm.distributed.tensor_parallel import apply_tensor_parallel
from reference_llm.errors import ConfigError

ModelFactory = Callable[[], nn.Module]
CHECKPOINTING = ("none", "selective", "full")


def parallelize(model: nn.Module, run_config: RunConfig, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy) -> None:
    """Lay `model` out for FSDP2 training, in place: tensor parallelism over `mesh`'s "tp" dimension
    when it has one -> activation checkpointing -> FSDP2 per block and root over "dp" (or the whole
    1-D mesh). `model` may be on the meta device."""
    dims = mesh.mesh_dim_names or ()
    if "tp" in dims:
        # Before checkpointing and sharding: it changes what a block holds (DTensor weights on "tp").
        apply_tensor_parallel(_blocks(model), mesh["tp"])
    dp_mesh = mesh["dp"] if "dp" in dims else mesh
    apply_activation_checkpointing(model, run_config.train.activation_checkpointing)
    for block in _blocks(model):
        fully_shard(block, mesh=dp_mesh, mp_policy=mp_policy)
    # The root group holds what is left: embeddings, final norm and output head (tied or not).
    fully_shard(model, mesh=dp_mesh, mp_policy=mp_policy)


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(
            f"{type(model).__name__} has no `blocks` list of transformer blocks to shard or checkpoint one at a time"
        )
    return blocks


# ----------------------------------------------------------------------------------------------------
# Activation checkpointing
# ----------------------------------------------------------------------------------------------------


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Checkpoint every block of `model` ("none", "selective" or "full"; see the module docstring)."""
    if mode not in CHECKPOINTING:
        raise ConfigError(f"train.activation_checkpointing must be one of {', '.join(CHECKPOINTING)}; got {mode!r}")
    if mode == "none":
        return
    for block in _blocks(model):
        block.forward = _checkpointed(block, mode)  # in place, on purpose: see the module docstring


def _checkpointed(block: nn.Module, mode: str) -> Callable[..., Any]:
    forward = block.forward
    heads = int(getattr(getattr(block, "attn", None), "n_head", 0))

    @functools.wraps(forward)
    def run(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if mode == "full":
            return checkpoint(forward, x, *args, use_reentrant=False, **kwargs)
        batch, tokens = x.shape[0], x.shape[1]
        contexts = functools.partial(_selective_contexts, batch * heads, tokens)
        return checkpoint(forward, x, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    return run


def _selective_contexts(batch_heads: int, tokens: int) -> tuple[Any, Any]:
    return create_selective_checkpoint_contexts(functools.partial(_attention_core_policy, batch_heads, tokens))


_aten = torch.ops.aten
_BATCHED_MATMULS = (_aten.bmm.default, _aten.baddbmm.default)
# Outputs worth keeping: what costs FLOPs to recompute (matmuls, attention kernels) and the norms and
# activation functions whose outputs the next matmul keeps anyway. Everything else in a block
# (views, copies, residual additions, RoPE's and RMSNorm's elementwise arithmetic) is cheap to
# recompute, and keeping its outputs would cost memory that autograd itself does not spend.
_KEPT = frozenset(
    op.default
    for op in (
        _aten.mm,
        _aten.addmm,
        _aten.bmm,
        _aten.baddbmm,
        _aten.native_layer_norm,
        _aten.gelu,
        _aten.silu,
        _aten._scaled_dot_product_flash_attention_for_cpu,
        _aten._scaled_dot_product_efficient_attention,
        _aten._scaled_dot_product_flash_attention,
        _aten._scaled_dot_product_cudnn_attention,
    )
)


def _attention_core_policy(
    batch_heads: int, tokens: int, ctx: Any, func: Any, *args: Any, **kwargs: Any
) -> CheckpointPolicy:
    """Recompute the attention core and cheap operations; keep matmul, norm and activation outputs.

    The core is every operation on the score matrix, a (B·H, T, T) tensor however it is viewed: the
    batched matmul that makes it (Q·Kᵀ, possibly fused with a mask as `baddbmm`), its scaling,
    masking, softmax, casts and dropout, and the matmul that applies it to V. They are recognised by
    shape, from the block's input (B, T, C) and its head count, so that how the model spells its
    attention does not matter; a fused SDPA kernel makes no score matrix, and its output is kept.
    """

    def is_scores(shape: Any) -> bool:
        return len(shape) >= 3 and tuple(shape[-2:]) == (tokens, tokens) and math.prod(shape[:-2]) == batch_heads

    if func in _BATCHED_MATMULS:  # the output's shape, before the operation runs
        a, b = args[-2], args[-1]
        if is_scores((*a.shape[:-1], b.shape[-1])):
            return CheckpointPolicy.PREFER_RECOMPUTE
    if any(isinstance(arg, torch.Tensor) and is_scores(arg.shape) for arg in args):
        return CheckpointPolicy.PREFER_RECOMPUTE
    return CheckpointPolicy.MUST_SAVE if func in _KEPT else CheckpointPolicy.PREFER_RECOMPUTE


# ----------------------------------------------------------------------------------------------------
# Deferred initialisation of a sharded model
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def materialize(
    model: nn.Module,
    record: InitRecord,
    device: torch.device,
    relayout: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Allocate a meta-built, already sharded `model` on `device` (each rank only its shards) and give
    every tensor its recorded initial value: one full tensor at a time is replayed, and each rank
    copies its own shard out of it, so the weights equal a single process's for the same seed.
    `relayout(name, full)` turns a full value into the layout the sharded tensor holds (tensor
    parallelism's regrouped fused rows); a name absent from `model` (another pipeline stage's) is
    skipped."""
    model.to_empty(device=device)
    present = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    present |= {name for name, _ in model.named_buffers(remove_duplicate=False)}
    for name in record.tensors:
        if name not in present:
            continue
        full = record.value(name)
        if relayout is not None:
            full = relayout(name, full)
        target = _tensor(model, name)
        if isinstance(target, DTensor):
            # src_data_rank=None: every rank holds the same full value, so each cuts its own piece
            # locally, without sending anything.
            piece = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None)
            target.to_local().copy_(piece.to_local())
        else:
            target.copy_(full)


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, attr = name.rpartition(".")
    return cast(torch.Tensor, getattr(model.get_submodule(module_name), attr))
