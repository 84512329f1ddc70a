"""Train a tiny model for a few steps through one engine, as the training loop would; used by the tests.

Run as `torchrun --nproc_per_node 2 tests/distributed/drive_engine.py --strategy zero3 ...`, or as a
plain `python` process for `--strategy single`. The data depend only on the optimizer step, never on
the world size: step s uses the `global_batch` sequences of `batch_for_step(s)`, and rank r of W takes
its share of them, one micro-batch per accumulation step. So a 2-process run and a 1-process run with
the same global batch see the same sequences in each step, and must compute the same gradients up to
floating-point summation order.

Rank 0 writes a JSON report: the global mean training loss of each step, gradient norms, and the loss
of the consolidated final weights on a fixed batch. `--save DIR --save-at K` writes a real checkpoint
(reference_llm.train.checkpoint; sharded for FSDP2 and ZeRO) after step K, and `--load` resumes from
one, so that resuming across strategies and world sizes can be tested.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from reference_llm.config import RunConfig, config_from_dict
from reference_llm.distributed import Engine, build_engine, runtime
from reference_llm.model import Transformer
from reference_llm.train.checkpoint import (
    load_checkpoint,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from reference_llm.train.optim import optimizer_factory
from reference_llm.train.sharded_checkpoint import ShardedCheckpoint, is_sharded

SEQ_LEN = 32


def batch_for_step(step: int, global_batch: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (global_batch, SEQ_LEN) inputs and targets for step `step`, whoever asks."""
    g = torch.Generator().manual_seed(10_000 + step)
    tokens = torch.randint(0, vocab, (global_batch, SEQ_LEN + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def run_config(args: argparse.Namespace) -> RunConfig:
    return config_from_dict(
        {
            "model": {"preset": args.preset, **json.loads(args.model)},
            "train": {
                "micro_batch": args.micro_batch,
                "grad_accum": args.grad_accum,
                "seq_len": SEQ_LEN,
                "dtype": args.dtype,
                "device": "cpu",
                "lr": args.lr,
                "min_lr": 0.0,
                "grad_clip": args.grad_clip,
                "weight_decay": 0.1,
                "activation_checkpointing": args.activation_checkpointing,
            },
            "distributed": {
                "strategy": args.strategy,
                "deepspeed_config": args.ds_config,
                "offload": args.offload,
                "tp": args.tp,
                "pp": args.pp,
            },
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model", default="{}", help="JSON object of ModelConfig fields over the preset's")
    parser.add_argument("--activation-checkpointing", default="none", choices=["none", "selective", "full"])
    parser.add_argument(
        "--memory",
        action="store_true",
        help="report each rank's peak RSS above its RSS before the model is built (and skip the "
        "final gather of the weights, which would raise it)",
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--first-step", type=int, default=0, help="first step (after --load)")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--grad-clip", type=float, default=0.5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--offload", default="none", choices=["none", "optimizer", "params"])
    parser.add_argument("--tp", type=int, default=1, help="distributed.tp")
    parser.add_argument("--pp", type=int, default=1, help="distributed.pp")
    parser.add_argument("--ds-config", default="deepspeed.json", help="for zero1-3 (the test writes it)")
    parser.add_argument("--save", help="run directory to write a checkpoint into, after step --save-at")
    parser.add_argument("--save-at", type=int, default=0, help="with --save: the step to checkpoint")
    parser.add_argument("--load", help="resume from this checkpoint before training")
    parser.add_argument("--weights-only", action="store_true", help="with --load: start a fresh optimizer")
    parser.add_argument("--crash-at", type=int, default=0, help="rank 0 raises after this step")
    parser.add_argument("--out", required=True, help="JSON report written by rank 0")
    args = parser.parse_args()

    cfg = run_config(args)
    if args.memory and args.strategy != "single":  # the process group's own memory belongs to the baseline
        runtime.init_process_group(runtime.process_info(args.strategy, "cpu"))
    baseline = rss_bytes()
    torch.manual_seed(0)  # the seed the training loop sets before building the model
    # A factory, as the training loop passes: FSDP2 and ZeRO-3 build the model deferred, each rank only
    # its shards, with the weights one process would have.
    engine = build_engine(cfg, functools.partial(Transformer, cfg.model), optimizer_factory(cfg.train))
    try:  # as reference_llm.train does: shut down on every rank, on success and on error alike
        initial = {} if args.memory or args.load else check_initial_weights(engine, cfg)
        report = {**train(engine, cfg, args), **initial}
        if args.memory:
            report["peak_rss_above_start"] = gather_ints(engine, peak_rss_bytes() - baseline)
        if engine.is_main:
            Path(args.out).write_text(json.dumps(report))
        engine.barrier()
    finally:
        engine.shutdown()
    return 0


def train(engine: Engine, cfg: RunConfig, args: argparse.Namespace) -> dict:
    # Ranks of one model replica (tensor/pipeline parallel) share their data: split by replica.
    rank, world = engine.dp_rank, engine.dp_size
    if args.load:
        found = resolve_checkpoint(args.load)
        if engine.shards_checkpoints and is_sharded(found) and not args.weights_only:
            engine.load_sharded(ShardedCheckpoint.open(found))  # each rank reads its own pieces
        else:
            ckpt = load_checkpoint(found, with_optimizer=not args.weights_only)
            engine.load_state(ckpt.weights, ckpt.optimizer_state)

    losses, norms = [], []
    micro, accum = args.micro_batch, args.grad_accum
    for step in range(args.first_step, args.first_step + args.steps):
        x, y = batch_for_step(step, micro * accum * world, cfg.model.vocab_size)
        # Rank r's rows for accumulation step a: block (a * world + r) of `micro` rows.
        total = torch.zeros(())
        for a in range(accum):
            rows = slice((a * world + rank) * micro, (a * world + rank + 1) * micro)
            with engine.accumulating(a == accum - 1):
                _, loss = engine.model(x[rows], y[rows])
                engine.backward(loss / accum)
            total += loss.detach().cpu() / accum
        norms.append(engine.step(args.lr, args.grad_clip))
        if engine.world_size > 1:  # every rank of a replica holds the replica's loss
            dist.all_reduce(total)
            total /= engine.world_size
        losses.append(total.item())
        if args.save and step + 1 == args.save_at:
            save(engine, cfg, args.save, step + 1)
        if engine.is_main and step + 1 == args.crash_at:
            raise RuntimeError(f"crash requested after step {step + 1}")

    report: dict = {"strategy": args.strategy, "world_size": engine.world_size, "losses": losses, "grad_norms": norms}
    if args.memory:
        return report
    weights = engine.full_state_dict()  # collective: every rank takes part, rank 0 uses the result
    if engine.is_main:
        final = Transformer(cfg.model)
        load_weights(final, weights)
        x, y = batch_for_step(999, 8, cfg.model.vocab_size)
        with torch.no_grad():
            eval_loss = final(x, y)[1].item()
        report.update({"eval_loss": eval_loss, "weight_names": sorted(weights)})
    return report


def check_initial_weights(engine: Engine, cfg: RunConfig) -> dict:
    """The engine's initial weights, gathered, and this rank's buffers (RoPE tables) against the model
    one process builds with the same seed, bit for bit; and the random generator against where that
    construction leaves it."""
    rng = torch.get_rng_state()
    weights = engine.full_state_dict()
    if not engine.is_main:
        return {}
    torch.manual_seed(0)
    reference = Transformer(cfg.model)
    rng_equal = torch.equal(torch.get_rng_state(), rng)
    torch.set_rng_state(rng)  # training goes on from the engine's generator state
    expected = {**reference.state_dict(), **dict(reference.named_buffers())}
    module = getattr(engine, "module", engine.model)  # through DDP's and DeepSpeed's wrappers
    tensors = {**weights, **dict(module.named_buffers())}
    differ = sorted(name for name, tensor in tensors.items() if not torch.equal(tensor, expected[name]))
    return {"initial_weights_differ": differ, "initial_rng_equal": rng_equal, "initial_tensors": len(tensors)}


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def peak_rss_bytes() -> int:
    """VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, from the launcher's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def gather_ints(engine: Engine, value: int) -> list[int]:
    """`value` from every rank, in rank order."""
    if engine.world_size == 1:
        return [value]
    values = [torch.zeros((), dtype=torch.int64) for _ in range(engine.world_size)]
    dist.all_gather(values, torch.tensor(value, dtype=torch.int64))
    return [int(v) for v in values]


def save(engine: Engine, cfg: RunConfig, run_dir: str, step: int) -> None:
    """A real checkpoint (reference_llm.train.checkpoint), as the training loop writes it: sharded
    engines write a piece per rank, the others write from rank 0."""
    state = {"step": step, "config": cfg.to_dict()}
    if engine.shards_checkpoints:
        save_sharded_checkpoint(run_dir, step, engine.sharded_state(), cfg.distributed.strategy, state, tokenizer=None)
    else:
        weights, opt_state = engine.full_state_dict(), engine.optimizer_state()
        if engine.is_main:
            save_checkpoint(run_dir, step, weights, opt_state, state, tokenizer=None)
    engine.barrier()


if __name__ == "__main__":
    sys.exit(main())
