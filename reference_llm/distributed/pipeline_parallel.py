"""Pipeline parallelism: the blocks cut into `pp` consecutive stages, one per rank, with PyTorch's
`torch.distributed.pipelining` (a `PipelineStage` per rank, driven by `Schedule1F1B`).

Stage s holds blocks [s·L/pp, (s+1)·L/pp); the first also the token (and position) embedding, the
last the final norm and output head (so tied embeddings are refused: `check_parallel_layout`). Each
training micro-batch of B sequences is split into B pipeline micro-batches of one sequence; 1F1B
(Narayanan et al. 2021, PipeDream-Flush) runs one forward and one backward alternately once the
pipe is full, so a stage keeps at most pp micro-batches of activations instead of all B (GPipe,
Huang et al. 2019). Hidden states travel between neighbouring stages by point-to-point send/recv.

As torchtitan does, the model is cut from outside: the full `Transformer` is built (deferred, on the
meta device), the other stages' blocks are replaced by empty placeholders and their embedding or head
removed, so every parameter keeps the model's own name ("blocks.3.attn.qkv.weight"), and only this
stage's tensors are allocated and initialised, with the values one process would give them.

The training loop calls `engine.model(x, y)` then `engine.backward(loss)`. A pipeline cannot split
those: the schedule interleaves the forward and backward of its micro-batches. So `engine.model`'s
forward runs the whole schedule (forward and backward; forward only in eval mode), returns the
micro-batch's mean loss on every stage, and `backward` has nothing left to do. The loss function
divides by `train.grad_accum` (as the loop divides the loss it would back-propagate) and by the
number of pipeline micro-batches.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.pipelining import PipelineStage, Schedule1F1B

from reference_llm.config import RunConfig, check_parallel_layout
from reference_llm.distributed import runtime
from reference_llm.distributed.base import (
    OptimizerState,
    SingleDeviceEngine,
    load_optimizer_state_by_name,
    optimizer_state_by_name,
)
from reference_llm.distributed.deferred_init import record_init
from reference_llm.distributed.parallelize import ModelFactory, apply_activation_checkpointing, materialize
from reference_llm.distributed.tensor_parallel import clip_grad_norm
from reference_llm.errors import DistributedError
from reference_llm.model.transformer import IGNORE_INDEX, Transformer
from reference_llm.train.checkpoint import check_weight_shapes
from reference_llm.train.optim import OptimizerFactory

ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


class ElsewhereBlock(nn.Module):
    """Stands in the block list for a block another pipeline stage holds: no parameters, never run."""


class _StageModule(nn.Module):
    """This stage's part of the forward, as `PipelineStage` runs it: token ids (first stage) or
    hidden states in, hidden states or logits (last stage) out."""

    def __init__(self, model: Transformer, layers: range, first: bool, last: bool) -> None:
        super().__init__()
        self.model, self.layers, self.first, self.last = model, layers, first, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        T = x.shape[1]
        if self.first:
            h = m.tok_emb(x)
            if m.pos_emb is not None:
                h = h + m.pos_emb(torch.arange(T, device=x.device))
            h = m.drop(h)
        else:
            h = x
        rope = (m.rope_cos[:T], m.rope_sin[:T]) if m.config.position == "rope" else None
        for i in self.layers:
            h = m.blocks[i](h, rope, None, i)
        return m.lm_head(m.norm_f(h)) if self.last else h


class PipelineEngine(SingleDeviceEngine):
    """`distributed.pp` stages on as many processes (strategy fsdp, tp = 1, no data parallelism yet)."""

    def __init__(
        self, run_config: RunConfig, model: nn.Module | ModelFactory, make_optimizer: OptimizerFactory
    ) -> None:
        d, t = run_config.distributed, run_config.train
        info = runtime.process_info(d.strategy, t.device)
        check_parallel_layout(run_config.model, d.strategy, d.tp, d.pp, info.world_size)
        runtime.init_process_group(info)
        self.rank, self.world_size, self.device = info.rank, info.world_size, info.device
        self.model_parallel = self.stages = d.pp
        self.stage, self.grad_accum = self.rank, t.grad_accum  # one stage per rank: world_size == pp
        per_stage = run_config.model.n_layer // self.stages
        self.layers = range(self.stage * per_stage, (self.stage + 1) * per_stage)
        first, last = self.stage == 0, self.stage == self.stages - 1

        record = None
        if not isinstance(model, nn.Module):
            model, record = record_init(model)
        model = cast(Transformer, model)
        with torch.device("meta"):
            whole = Transformer(run_config.model)  # names and shapes of every stage's tensors
        self.full_shapes = {name: p.shape for name, p in whole.named_parameters()}
        self.full_groups = optimizer_state_by_name(make_optimizer(whole), whole)["param_groups"]
        _cut(model, self.layers, first, last)
        apply_activation_checkpointing(model, t.activation_checkpointing)
        if record is None:
            model.to(self.device)
        else:
            materialize(model, record, self.device)
        self.model = model
        self.optimizer = make_optimizer(model)

        stage = PipelineStage(_StageModule(model, self.layers, first, last), self.stage, self.stages, self.device)
        # Every stage is given the loss function (only the last calls it): without one, a schedule
        # runs forward passes only. scale_grads=False: the schedule would divide every accumulated
        # gradient, the earlier micro-steps' too, at the end of each call; the loss is divided instead.
        loss_fn = functools.partial(_loss, share=t.micro_batch * self.grad_accum)
        self.schedule = Schedule1F1B(stage, n_microbatches=t.micro_batch, loss_fn=loss_fn, scale_grads=False)
        # Instance attribute, on purpose: the loop and `evaluate` call `engine.model(x, y)`.
        model.forward = self._run  # type: ignore[method-assign,assignment]  # the schedule is the forward

    def _run(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: Any = None) -> tuple[None, Any]:
        if targets is None or cache is not None:
            raise DistributedError(
                "a pipeline-parallel model computes training and evaluation losses only; generate from "
                "its consolidated checkpoint in one process"
            )
        first, last = self.stage == 0, self.stage == self.stages - 1
        losses: list[torch.Tensor] = []
        inputs = (idx.to(self.device),) if first else ()
        target = targets.to(self.device) if last else None
        run = self.schedule.step if self.model.training else self.schedule.eval
        run(*inputs, target=target, losses=losses)
        # Every stage returns the loss, as every rank of the other engines does (the last computed it).
        loss = torch.stack(losses).sum().detach() * self.grad_accum if last else torch.zeros((), device=self.device)
        dist.broadcast(loss, src=self.stages - 1)
        return None, loss

    def backward(self, loss: torch.Tensor) -> None:
        """Nothing: the schedule ran the backward inside `engine.model(x, y)`."""

    def step(self, lr: float, grad_clip: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # The global norm: each stage's squares summed over the stages.
        norm = clip_grad_norm(list(self.model.parameters()), grad_clip, group=dist.group.WORLD)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # -- consolidated state: every tensor sent by its stage to rank 0 --------------------------------

    def _owner(self, name: str) -> int:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) // len(self.layers)
        return 0 if name.startswith(("tok_emb.", "pos_emb.")) else self.stages - 1

    def _to_rank0(self, name: str, tensor: torch.Tensor | None, shape: Any) -> torch.Tensor:
        """`tensor` (held by `name`'s stage) on rank 0; an empty placeholder elsewhere."""
        owner = self._owner(name)
        if owner == 0:
            return tensor.detach().cpu() if tensor is not None else torch.empty(0)
        if self.rank == owner:
            assert tensor is not None
            # On the device: NCCL sends only GPU tensors (Adam's step count lives on the CPU).
            dist.send(tensor.detach().to(self.device, torch.float32).contiguous(), dst=0)
        elif self.rank == 0:
            received = torch.empty(shape, dtype=torch.float32, device=self.device)
            dist.recv(received, src=owner)
            return received.cpu()
        return torch.empty(0)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return {name: self._to_rank0(name, params.get(name), shape) for name, shape in self.full_shapes.items()}

    def optimizer_state(self) -> OptimizerState:
        local = optimizer_state_by_name(self.optimizer, self.model)["state"]
        if not local:  # every stage steps together: none has state before the first step
            return {"state": {}, "param_groups": self._groups()}
        state: dict[str, dict[str, torch.Tensor]] = {}
        for name, shape in self.full_shapes.items():
            mine = local.get(name, {})
            entry = {key: self._to_rank0(name, mine.get(key), shape) for key in ADAM_MOMENTS}
            entry["step"] = self._to_rank0(name, mine.get("step"), ())
            state[name] = entry
        return {"state": state, "param_groups": self._groups()}

    def _groups(self) -> list[dict[str, Any]]:
        """The whole model's parameter groups, with this optimizer's settings."""
        return [
            {**{k: v for k, v in mine.items() if k != "params"}, "params": list(whole["params"])}
            for mine, whole in zip(self.optimizer.param_groups, self.full_groups)
        ]

    def load_state(self, weights: dict[str, torch.Tensor], optimizer_state: OptimizerState | None) -> None:
        check_weight_shapes(self.full_shapes, weights)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[name])
        if optimizer_state is not None:
            saved_groups = optimizer_state["param_groups"]
            groups = [
                {**g, "params": [n for n in g["params"] if n in params]} for g in saved_groups
            ]  # this stage's names, in the saved order
            state = {name: s for name, s in optimizer_state["state"].items() if name in params}
            load_optimizer_state_by_name(self.optimizer, self.model, {"state": state, "param_groups": groups})

    def barrier(self) -> None:
        runtime.barrier()

    def shutdown(self) -> None:
        runtime.shutdown()


def _cut(model: Transformer, layers: range, first: bool, last: bool) -> None:
    """Keep only this stage's part of `model`, in place, names unchanged."""
    for i in range(len(model.blocks)):
        if i not in layers:
            model.blocks[i] = ElsewhereBlock()
    if not first:
        model.tok_emb = None  # type: ignore[assignment]  # another stage's
        model.pos_emb = None
    if not last:
        model.norm_f = None  # type: ignore[assignment]
        model.lm_head = None  # type: ignore[assignment]


def _loss(logits: torch.Tensor, targets: torch.Tensor, share: int) -> torch.Tensor:
    """One pipeline micro-batch's part of what the loop back-propagates: the model's loss
    (Transformer.forward's) over `share` = micro-batches per call x calls per optimizer step."""
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    return loss / share
