"""Tensor and pipeline parallelism compute what one process computes, on CPU over gloo.

Each run trains the `tiny` Llama (GQA: 4 query and 2 key/value heads, SwiGLU, RoPE, untied head)
for 4 steps on the same 8 sequences per step as one process (drive_engine.py; gradient clipping
active at 0.5), the model built deferred from a factory as training builds it:

- TP=2 on 2 processes: each rank holds 2 query heads, 1 key/value head and half the MLP;
- TP=2 x FSDP2 dp=2 on 4 processes: a 2-D ("dp", "tp") mesh, each parameter sharded on both;
- PP=2 on 2 processes: one block per stage, 1F1B over 4 pipeline micro-batches of one sequence.

The TP and PP runs checkpoint after step 2 (consolidated: the model's own layout, written by rank 0),
and one process resumes them (and a TP run resumes one process's checkpoint).

In fp32 the only difference from one process is the order of floating-point sums (all-reduces of
partial matmuls, per-micro-batch losses), measured at ~1e-6 on losses of ~6.2; the tests allow
TOLERANCE = 1e-4 absolute on every step's loss, and the same relative on gradient norms and on the
loss of the consolidated final weights evaluated in one process. The initial weights, gathered, are
one process's bit for bit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reference_llm.assets import corpus_path
from reference_llm.config import config_from_dict
from reference_llm.errors import ConfigError
from reference_llm.train.checkpoint import load_model

pytestmark = pytest.mark.distributed

TOLERANCE = 1e-4
REPO = Path(__file__).resolve().parents[2]


def check_matches_one_process(run: dict, ref: dict, what: str) -> None:
    assert ref["world_size"] == 1 and ref["losses"][-1] < ref["losses"][0]  # it trains
    assert run["initial_weights_differ"] == [] and run["initial_tensors"] == ref["initial_tensors"]
    loss_diff = max(abs(a - b) for a, b in zip(run["losses"], ref["losses"]))
    norm_diff = max(abs(a - b) / b for a, b in zip(run["grad_norms"], ref["grad_norms"]))
    eval_diff = abs(run["eval_loss"] - ref["eval_loss"])
    print(f"{what}: max |loss diff| {loss_diff:.2e}, max rel grad-norm diff {norm_diff:.2e}, eval {eval_diff:.2e}")
    assert len(run["losses"]) == len(ref["losses"]) and loss_diff < TOLERANCE, (run["losses"], ref["losses"])
    assert norm_diff < TOLERANCE, (run["grad_norms"], ref["grad_norms"])
    # The consolidated weights (fused rows back in the model's layout) load into one process's model.
    assert run["weight_names"] == ref["weight_names"] and eval_diff < TOLERANCE * ref["eval_loss"]


@pytest.fixture(scope="module")
def tp2(drive):
    """TP=2 on 2 processes, checkpointing (consolidated) after step 2."""
    return drive("tp2", "fsdp", "--tp", "2", "--micro-batch", "4", save_at=2)


@pytest.fixture(scope="module")
def pp2(drive):
    """PP=2 on 2 processes, checkpointing (consolidated) after step 2."""
    return drive("pp2", "fsdp", "--pp", "2", "--micro-batch", "4", save_at=2)


@pytest.mark.slow
def test_tensor_parallel_two_ranks_match_one_process(tp2, reference):
    assert tp2.report["world_size"] == 2
    check_matches_one_process(tp2.report, reference.report, "tp=2")


@pytest.mark.slow
def test_tensor_parallel_with_fsdp_on_four_ranks_matches_one_process(drive, reference):
    run = drive("tp2-dp2", "fsdp", "--tp", "2", "--micro-batch", "2", nproc=4).report
    assert run["world_size"] == 4
    check_matches_one_process(run, reference.report, "tp=2 x dp=2")


@pytest.mark.slow
def test_pipeline_two_stages_match_one_process(pp2, reference):
    assert pp2.report["world_size"] == 2
    check_matches_one_process(pp2.report, reference.report, "pp=2")


def resume(drive, source, name: str, *layout: str) -> dict:
    assert source.checkpoint is not None and (source.checkpoint / "latest").is_file()
    return drive(name, *layout, "--load", str(source.checkpoint), "--first-step", "2", "--steps", "2").report


@pytest.mark.slow
@pytest.mark.parametrize(
    ("writer", "reader"),
    [("tp2", ("single",)), ("pp2", ("single",)), ("reference", ("fsdp", "--tp", "2", "--micro-batch", "4"))],
    ids=["tp2-to-single", "pp2-to-single", "single-to-tp2"],
)
def test_checkpoints_move_between_layouts(writer, reader, request, drive, reference):
    """A TP or PP run writes consolidated weights and Adam state in the model's own layout: one process
    resumes them, and a tensor-parallel run resumes one process's; steps 3 and 4 are then the
    uninterrupted run's."""
    source = request.getfixturevalue(writer)
    resumed = resume(drive, source, f"{writer}-to-{reader[0]}-{len(reader)}", *reader)
    diff = max(abs(a - b) for a, b in zip(resumed["losses"], reference.report["losses"][2:]))
    print(f"{writer} -> {' '.join(reader)}: max |loss diff| after resuming {diff:.2e}")
    assert len(resumed["losses"]) == 2 and diff < TOLERANCE, (resumed["losses"], reference.report["losses"])


# ----------------------------------------------------------------------------------------------------
# Layouts the library cannot run: one line through the real entry point, exit 2
# ----------------------------------------------------------------------------------------------------


def write_config(root: Path) -> Path:
    config = root / "train.toml"
    config.write_text(
        f"""
[model]
preset = "tiny"
[data]
corpus = "{corpus_path()}"
tokenizer = "char"
cache_dir = "{root / "cache"}"
[train]
micro_batch = 2
max_steps = 1
device = "cpu"
[checkpoint]
dir = "{root / "runs"}"
[distributed]
strategy = "fsdp"
"""
    )
    return config


@pytest.mark.slow
def test_pipeline_through_the_real_entry_point(tmp_path, launch_ok):
    """`python -m reference_llm.train` under torchrun with distributed.pp=2: training, an evaluation
    (the schedule's forward-only pass) and a consolidated checkpoint that loads as a plain model."""
    config = write_config(tmp_path)
    args = ["-m", "reference_llm.train", "--config", str(config), "distributed.pp=2", "train.max_steps=2"]
    result = launch_ok([*args, "eval.interval=1", "eval.iters=1"], 2, tmp_path, "pp=2 training")
    assert result.stdout.count("done: step 2") == 1 and "val_loss" in result.stdout, result.stdout
    # Loading checks every name and shape: both stages' tensors are in it, in the model's own layout.
    model, _, _ = load_model(tmp_path / "runs")
    x = torch.randint(0, model.config.vocab_size, (1, 8))
    assert len(model.blocks) == 2 and torch.isfinite(model(x, x)[1])


@pytest.mark.parametrize(
    ("overrides", "launch", "says"),
    [
        (["distributed.strategy=ddp", "distributed.tp=2"], {}, ["ddp cannot carry them", "strategy=fsdp"]),
        # As rank 0 of 3 under a launcher: refused by the engine before any process group is joined.
        (["distributed.tp=2"], {"RANK": "0", "WORLD_SIZE": "3"}, ["3 processes cannot be split as tp=2"]),
    ],
    ids=["tp-with-ddp", "world-not-a-multiple"],
)
def test_impossible_layouts_are_one_line(tmp_path, dist_env, overrides, launch, says):
    config = write_config(tmp_path)
    env = {**dist_env, **launch, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "reference_llm.train", "--config", str(config), *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines and lines[-1].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for text in says:
        assert text in lines[-1], lines[-1]


@pytest.mark.parametrize(
    ("distributed", "model", "says"),
    [
        ({"tp": 3}, {}, "distributed.tp=3 must divide model.n_head=4 (each rank takes 1/tp of them); tp could be 1, 2"),
        ({"tp": 4}, {}, "distributed.tp=4 must divide model.n_kv_head=2"),
        ({"tp": 2}, {"ffn_hidden": 171}, "distributed.tp=2 must divide model.ffn_hidden=171"),
        ({"pp": 4}, {}, "distributed.pp=4 must divide model.n_layer=2 (each stage runs as many blocks); pp could be 1"),
        ({"pp": 2}, {"tie_embeddings": True}, "pp=2 needs model.tie_embeddings=false"),
        ({"pp": 2, "strategy": "zero3"}, {}, "zero3 cannot carry them: use strategy=fsdp"),
        ({"tp": 0}, {}, "distributed.tp must be at least 1, got 0"),
    ],
)
def test_layout_rule(distributed, model, says):
    """The rule `check_parallel_layout` applies when a config is read (and llmgen's planner asks it)."""
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"preset": "tiny", **model}, "distributed": {"strategy": "fsdp", **distributed}})
    assert says in str(err.value)


def test_the_planner_refuses_what_the_library_refuses():
    """`llmgen estimate` (and the plans of `llmgen new`) apply the same `check_parallel_layout`: a
    layout the engines would refuse is refused with the library's line, `auto` picks the strategy
    that carries tensor parallelism, and a tensor-parallel tip is offered only where it runs."""
    from generator.errors import EstimateError
    from generator.estimate.api import RunSpec, estimate_run
    from generator.estimate.parse import parse_hardware
    from reference_llm.model.config import ModelConfig

    llama = ModelConfig.preset("llama-8b")
    spec = RunSpec(llama, parse_hardware("2x8xH100"), 1e9, micro_batch=1)
    for layout, says in [
        (dict(tp=8, pp=2), "distributed.pp=2 with tp=8 is not supported yet"),
        (dict(tp=2, parallelism="zero3"), "zero3 cannot carry them: use strategy=fsdp"),
        (dict(pp=2), "distributed.pp=2 on 16 processes would add data parallelism"),
    ]:
        with pytest.raises(EstimateError) as err:
            estimate_run(spec.but(**layout))
        assert "reference_llm cannot run it" in str(err.value) and says in str(err.value)
    est = estimate_run(spec.but(tp=8))
    assert (est.strategy, est.tp, est.dp) == ("fsdp", 8, 2) and "fsdp only" in est.strategy_reason
