"""Tensor parallelism: each block's attention heads and MLP hidden units split over the "tp" ranks.

The Megatron-LM split (Shoeybi et al. 2019, sec. 3), with PyTorch's DTensor `parallelize_module`:

    attn.qkv  ColwiseParallel    rank r computes q, k and v of its H/tp query and K/tp key/value heads
    attn.proj RowwiseParallel    its slice of the re-joined heads; the partial sums are all-reduced
    mlp.fc    ColwiseParallel    its F/tp hidden units (SwiGLU: its F/tp gate and F/tp up units)
    mlp.proj  RowwiseParallel    all-reduced again

so a block costs one all-reduce forward and one backward per half, and attention needs no
communication at all: a query head only ever meets the key/value heads of its own group, which the
same rank holds. Everything else (embeddings, norms, the output head) is replicated on the tp ranks
and computed by each of them; torchtitan also shards the embedding and head over the vocabulary and
the norms over the sequence ("sequence parallelism"), which saves memory but not FLOPs.

The model fuses q, k and v into one `qkv` projection ([q | k | v] rows) and SwiGLU's gate and up into
one `fc` ([gate | up]). A plain column split would give rank 0 the first rows of that stack (all of q,
say) instead of its own heads of each part. So while tensor-parallel, these weights are held with
their rows regrouped rank by rank, [q_0 k_0 v_0 | q_1 k_1 v_1 | ...], where a plain split is right;
`to_tp_rows` / `from_tp_rows` convert, and the engine applies them wherever a full tensor crosses the
boundary (initialisation, consolidated checkpoints), so that what is saved and loaded is the model's
own layout. Each Attention is told its local head counts; the model reads every other shape from its
local weights.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from reference_llm.model.transformer import MLP, Attention

# parameter name -> sizes of the stacked parts along dim 0, for the weights (and biases) that fuse parts
FusedRows = dict[str, tuple[int, ...]]


def apply_tensor_parallel(blocks: nn.ModuleList, tp_mesh: DeviceMesh) -> None:
    """Split every transformer block of `blocks` over `tp_mesh`, in place. Fused weights must already be in the
    rank-grouped layout (`to_tp_rows`), or on the meta device (then `materialize` puts them so)."""
    tp = tp_mesh.size()
    plan = {
        "attn.qkv": ColwiseParallel(),
        "attn.proj": RowwiseParallel(),
        "mlp.fc": ColwiseParallel(),
        "mlp.proj": RowwiseParallel(),
    }
    for block in blocks:
        parallelize_module(block, tp_mesh, plan)
        attn = cast(Attention, block.get_submodule("attn"))
        # The forward splits q, k, v and views heads by these counts: this rank's share.
        attn.n_head //= tp
        attn.n_kv_head //= tp


def fused_rows(model: nn.Module) -> FusedRows:
    """Which parameters stack several parts that must be split separately, by the model's own
    parameter names: each block's qkv projection and, with SwiGLU, its MLP input projection."""
    found: FusedRows = {}
    for index, block in model.get_submodule("blocks").named_children():
        attn, mlp = cast(Attention, block.get_submodule("attn")), cast(MLP, block.get_submodule("mlp"))
        q, kv = attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim
        parts: dict[str, tuple[nn.Linear, tuple[int, ...]]] = {"attn.qkv": (attn.qkv, (q, kv, kv))}
        if mlp.swiglu:
            parts["mlp.fc"] = (mlp.fc, (mlp.proj.in_features, mlp.proj.in_features))
        for path, (linear, sizes) in parts.items():
            found[f"blocks.{index}.{path}.weight"] = sizes
            if linear.bias is not None:
                found[f"blocks.{index}.{path}.bias"] = sizes
    return found


def _row_order(sizes: tuple[int, ...], tp: int) -> torch.Tensor:
    """Row indices that regroup parts of `sizes` rows rank by rank: rank r's rows of every part,
    then rank r+1's."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    order = [
        torch.arange(start + r * (size // tp), start + (r + 1) * (size // tp))
        for r in range(tp)
        for start, size in zip(starts, sizes)
    ]
    return torch.cat(order)


def to_tp_rows(tensor: torch.Tensor, sizes: tuple[int, ...], tp: int) -> torch.Tensor:
    """The model's layout [part 1 | part 2 | ...] -> the rank-grouped layout (a new tensor)."""
    return tensor.index_select(0, _row_order(sizes, tp).to(tensor.device))


def from_tp_rows(tensor: torch.Tensor, sizes: tuple[int, ...], tp: int) -> torch.Tensor:
    """Inverse of `to_tp_rows`."""
    out = torch.empty_like(tensor)
    out.index_copy_(0, _row_order(sizes, tp).to(tensor.device), tensor)
    return out


@torch.no_grad()
def clip_grad_norm(params: list[nn.Parameter], max_norm: float, group: dist.ProcessGroup | None = None) -> float:
    """`torch.nn.utils.clip_grad_norm_` for gradients that live on different device meshes (tensor-
    parallel DTensors next to replicated ones, which torch's version cannot stack together) and, with
    `group`, on different pipeline stages (each holds other parameters: their squares are summed over
    `group`). Returns the global norm before clipping; `max_norm` <= 0 only measures."""
    by_mesh: dict[object, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_mesh.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p.grad)
    squares = torch.zeros((), dtype=torch.float32)
    for grads in by_mesh.values():
        # One reduction per mesh: the norms of a DTensor are partial until made full.
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))
        full = norm.full_tensor() if isinstance(norm, DTensor) else norm
        squares += full.cpu() ** 2
    if group is not None:
        dist.all_reduce(squares, group=group)
    total = float(squares.sqrt())
    # The same coefficient as torch's clip_grad_norm_, so clipped runs stay comparable with one process.
    coef = max_norm / (total + 1e-6)
    if max_norm > 0 and coef < 1.0:
        for grads in by_mesh.values():
            for g in grads:
                g.mul_(coef)
    return total
