"""Every parallel strategy computes what one process computes, and checkpoints move between strategies.

Two processes on gloo build the model as training does (a factory: FSDP2 on the meta device, ZeRO-3
under zero.Init, each rank only its shards; drive_engine.py checks the gathered initial weights against
one process's, bit for bit) and train the `tiny` model for 4 steps (2 micro-batches of 2 sequences per rank per
step, gradient clipping active at 0.5) through DDP, FSDP2 and DeepSpeed ZeRO-1/2/3; one process trains
on the same 8 sequences per step. In fp32 the only difference is the order in which floating-point sums
are taken (all-reduce vs local sum), which moves losses by about 1e-7 relative; we allow 1e-4.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

STRATEGIES = ("ddp", "fsdp", "zero1", "zero2", "zero3")
RTOL = 1e-4
DEEPSPEED = ("zero1", "zero2", "zero3")

pytestmark = pytest.mark.distributed


def close(a: list[float] | float, b: list[float] | float) -> bool:
    a, b = (a, b) if isinstance(a, list) else ([a], [b])  # type: ignore[list-item]
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=RTOL) for x, y in zip(a, b))


def _param(strategy: str):
    marks = [pytest.mark.slow] if strategy in DEEPSPEED else []  # DeepSpeed's start (and first JIT build)
    return pytest.param(strategy, marks=marks, id=strategy)


@pytest.mark.parametrize("strategy", [_param(s) for s in STRATEGIES])
def test_two_processes_match_one_process(strategy, strategy_run, reference):
    run = strategy_run(strategy).report
    ref = reference.report
    assert run["world_size"] == 2 and ref["world_size"] == 1
    # Every rank built (FSDP2: on the meta device; ZeRO-3: under zero.Init) the weights and buffers one
    # process builds for the same seed, bit for bit, and left the random generator where it leaves it.
    assert run["initial_weights_differ"] == [] and run["initial_tensors"] == ref["initial_tensors"]
    assert run["initial_rng_equal"] and ref["initial_rng_equal"]
    assert ref["losses"][-1] < ref["losses"][0]  # it trains: the comparison is not between two flat lines
    assert close(run["losses"], ref["losses"]), (run["losses"], ref["losses"])
    assert close(run["grad_norms"], ref["grad_norms"]), (run["grad_norms"], ref["grad_norms"])
    # The consolidated weights (gathered from shards/partitions) are the single-process weights.
    assert run["weight_names"] == ref["weight_names"]
    assert close(run["eval_loss"], ref["eval_loss"])


# (checkpoint written by, resumed under, offload): across the three implementations and back to one
# process. ddp -> zero2 resumes into ZeRO-Offload: DeepSpeed's CPU Adam (a second JIT build, ~40 s once).
RESUMES = [
    pytest.param("zero3", "ddp", "none", marks=pytest.mark.slow, id="zero3-to-ddp"),
    pytest.param("fsdp", "single", "none", id="fsdp-to-single"),
    pytest.param("ddp", "zero2", "optimizer", marks=pytest.mark.slow, id="ddp-to-zero2-offload"),
    pytest.param("single", "fsdp", "none", id="single-to-fsdp"),
]


def _resume(drive, source, strategy: str, name: str, *extra: str, offload: str = "none"):
    assert source.checkpoint is not None and (source.checkpoint / "latest").is_file()
    return drive(
        name, strategy, "--load", str(source.checkpoint), "--first-step", "2", "--steps", "2", *extra, offload=offload
    )


@pytest.mark.parametrize(("writer", "reader", "offload"), RESUMES)
def test_checkpoint_resumes_under_another_strategy(writer, reader, offload, drive, strategy_run, reference):
    source = reference if writer == "single" else strategy_run(writer)
    resumed = _resume(drive, source, reader, f"{writer}-to-{reader}", offload=offload).report
    # Steps 3 and 4 after resuming are the uninterrupted run's steps 3 and 4: weights and Adam state
    # (moments and step count) came through the consolidated checkpoint intact.
    assert close(resumed["losses"], reference.report["losses"][2:]), (resumed["losses"], reference.report["losses"])
    assert close(resumed["eval_loss"], reference.report["eval_loss"])


def test_resume_comparison_detects_a_lost_optimizer_state(drive, reference):
    """The control for the test above: resuming the weights alone (fresh Adam moments) moves the
    losses by far more than the tolerance, so a checkpoint that dropped optimizer state would fail."""
    fresh = _resume(drive, reference, "single", "weights-only", "--weights-only").report
    expected = reference.report["losses"][2:]
    assert fresh["losses"][0] == pytest.approx(expected[0], rel=RTOL)  # same weights: same first loss
    assert abs(fresh["losses"][1] - expected[1]) / expected[1] > 10 * RTOL


def test_an_error_on_one_rank_ends_the_whole_job(torchrun, tmp_path):
    """Rank 0 fails after step 1 while rank 1 goes on to its next all-reduce. The failing rank must not
    wait in the shutdown barrier (both would then wait for gloo's 30-minute timeout): it leaves the
    process group, rank 1's collective fails, and the job ends with rank 0's error."""
    driver = Path(__file__).with_name("drive_engine.py")
    result = torchrun(
        [str(driver), "--strategy", "ddp", "--crash-at", "1", "--out", str(tmp_path / "r.json")],
        2,
        tmp_path,
        timeout=300,
    )
    assert result.returncode != 0
    assert "RuntimeError: crash requested after step 1" in result.stderr
    assert not (tmp_path / "r.json").exists()
