"""Sharded training at scale, on 2 gloo processes: checkpoints that each rank writes alone and any
strategy or world size reads, a rank's memory against the estimator for a model one process could
not hold, and activation checkpointing under every engine.

The 2-process runs are the session's `strategy_run`s of test_engines.py (4 steps, a checkpoint after
step 2); a resume trains steps 3 and 4 from that checkpoint on the same data (drive_engine.py).
"""

from __future__ import annotations

import json
import math

import pytest

from generator.estimate import RunSpec, estimate_run
from generator.estimate.hardware import GPUSpec, Hardware
from reference_llm.model import ModelConfig

pytestmark = pytest.mark.distributed
RTOL = 1e-4
SEQ_LEN = 32  # drive_engine.SEQ_LEN


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=RTOL) for x, y in zip(a, b))


def resume(drive, source, strategy: str, name: str, nproc: int = 2, *extra: str):
    return drive(
        name, strategy, "--load", str(source.checkpoint), "--first-step", "2", "--steps", "2", *extra, nproc=nproc
    ).report


def test_fsdp_writes_a_shard_per_rank_and_resumes_bit_exactly(drive, strategy_run):
    source = strategy_run("fsdp")
    step = source.checkpoint / "step_0000002"
    assert (step / "sharded.json").is_file() and not (step / "model.safetensors").exists()  # nothing gathered
    assert sorted(p.name for p in (step / "shards").iterdir()) == [
        "shard-00001-model-00001-of-00001.safetensors",
        "shard-00002-model-00001-of-00001.safetensors",
    ]
    manifest = json.loads((step / "sharded.json").read_text())
    assert manifest["strategy"] == "fsdp" and manifest["world_size"] == 2
    resumed = resume(drive, source, "fsdp", "fsdp-to-fsdp")
    # The same world size reads back exactly what was written: steps 3 and 4 are the uninterrupted ones.
    assert resumed["losses"] == source.report["losses"][2:]
    assert resumed["eval_loss"] == source.report["eval_loss"]


@pytest.mark.slow
def test_zero3_writes_a_shard_per_rank_and_resumes_bit_exactly(drive, strategy_run):
    source = strategy_run("zero3")
    assert json.loads((source.checkpoint / "step_0000002" / "sharded.json").read_text())["strategy"] == "zero3"
    resumed = resume(drive, source, "zero3", "zero3-to-zero3")
    assert resumed["losses"] == source.report["losses"][2:]
    assert resumed["eval_loss"] == source.report["eval_loss"]


# (written by on 2 ranks, read by, on how many ranks): fewer ranks, and across the two implementations.
RESHARDS = [
    pytest.param("fsdp", "fsdp", 1, id="fsdp-2-to-fsdp-1"),
    pytest.param("zero3", "fsdp", 2, marks=pytest.mark.slow, id="zero3-2-to-fsdp-2"),
    pytest.param("zero2", "zero3", 1, marks=pytest.mark.slow, id="zero2-2-to-zero3-1"),
]


@pytest.mark.parametrize(("writer", "reader", "nproc"), RESHARDS)
def test_a_sharded_checkpoint_loads_at_another_world_size_or_strategy(
    writer, reader, nproc, drive, strategy_run, reference
):
    resumed = resume(drive, strategy_run(writer), reader, f"{writer}-2-to-{reader}-{nproc}", nproc)
    assert resumed["world_size"] == nproc
    # Weights and AdamW state (moments and step) came through: steps 3 and 4 are the uninterrupted
    # run's (up to summation order, as between the strategies themselves).
    assert close(resumed["losses"], reference.report["losses"][2:]), (resumed["losses"], reference.report["losses"])
    assert close([resumed["eval_loss"]], [reference.report["eval_loss"]])


ENGINES_WITH_CHECKPOINTING = [
    pytest.param("ddp", "full", id="ddp-full"),
    pytest.param("fsdp", "selective", id="fsdp-selective"),
    pytest.param("zero3", "full", marks=pytest.mark.slow, id="zero3-full"),
]


@pytest.mark.parametrize(("strategy", "mode"), ENGINES_WITH_CHECKPOINTING)
def test_activation_checkpointing_trains_the_same_under_every_engine(strategy, mode, drive, reference):
    """Recomputing activations changes what is kept, not what is computed: the losses and gradient
    norms are one process's without checkpointing."""
    run = drive(f"{strategy}-ac-{mode}", strategy, "--activation-checkpointing", mode).report
    assert close(run["losses"], reference.report["losses"]), (run["losses"], reference.report["losses"])
    assert close(run["grad_norms"], reference.report["grad_norms"])


# 114M parameters: fp32 weights and AdamW states alone (12 bytes per parameter) are 1.27 GiB.
LARGE = {"n_layer": 16, "d_model": 768, "n_head": 12, "vocab_size": 512, "block_size": SEQ_LEN}
MEMORY_TOLERANCE = 0.15


def per_rank_estimate(config: ModelConfig, strategy: str) -> float:
    """llmgen's estimate of one rank's memory (bytes): `--hardware cpu` models one process only, so
    each CPU rank is described as one device of a 2-device machine."""
    rank = GPUSpec(
        "cpu-rank", bf16_tflops=1.0, fp32_tflops=1.0, fp8_tflops=None, memory_gib=8.0, price_per_hour=0.0, mfu=0.35
    )
    spec = RunSpec(
        config,
        Hardware(1, 2, rank),
        tokens=1e6,
        parallelism=strategy,
        precision="float32",
        micro_batch=1,
        seq_len=SEQ_LEN,
    )
    return estimate_run(spec).memory_per_gpu_gib * 2**30


@pytest.mark.slow
def test_each_rank_holds_its_share_of_a_model_one_process_could_not_hold(drive):
    """FSDP2 with deferred init, 2 ranks, 2 steps of a 114M-parameter model. The budget per rank is
    the estimate plus 15%; the model's fp32 weights and AdamW states alone exceed it, so a rank that
    built the whole model and optimizer, or any one process training it, could not stay within it.
    Each rank's peak RSS above its start (imports and process group done) must."""
    config = ModelConfig.preset("tiny-gpt2", **LARGE)
    estimate = per_rank_estimate(config, "fsdp")
    budget = (1 + MEMORY_TOLERANCE) * estimate
    assert 12 * config.num_params() > budget
    run = drive(
        "fsdp-memory",
        "fsdp",
        "--preset",
        "tiny-gpt2",
        "--model",
        json.dumps(LARGE),
        "--micro-batch",
        "1",
        "--grad-accum",
        "1",
        "--steps",
        "2",
        "--memory",
    ).report
    assert run["losses"][1] < run["losses"][0] + 1.0 and all(math.isfinite(x) for x in run["losses"])
    for rank, peak in enumerate(run["peak_rss_above_start"]):
        assert peak < budget, f"rank {rank}: {peak / 2**20:.0f} MiB over a budget of {budget / 2**20:.0f} MiB"
        assert peak == pytest.approx(estimate, rel=MEMORY_TOLERANCE), (rank, peak / 2**20, estimate / 2**20)
