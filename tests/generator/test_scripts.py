"""The generated launch scripts and DeepSpeed config, for 4 nodes x 8 H100 (zero3 and fsdp), one node of
8 H100 (zero2) and a CPU.

The scripts are not only read but run, by bash, with stand-ins for torchrun, deepspeed, srun, scontrol
and python on the PATH that record the command line they were given. So what is checked is the command
each script really launches: process counts, node counts, the rendezvous and the config it passes.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reference_llm.config import load_config
from reference_llm.distributed import ds_config

SCRIPTS = ("train.sh", "train_torchrun.sh", "train_deepspeed.sh", "slurm.sbatch")
TRAIN = ["-m", "reference_llm.train", "--config", "configs/train.toml"]
PROJECTS = {  # name -> what `llmgen new` is given
    "zero3-4x8": {"hardware": "4x8xH100", "parallelism": "zero3", "model_preset": "llama-8b"},
    "fsdp-4x8": {"hardware": "4x8xH100", "parallelism": "fsdp", "model_preset": "llama-8b"},
    "zero2-8": {"hardware": "8xH100", "parallelism": "zero2", "model_preset": "gpt2-350m"},
    "cpu": {"hardware": "cpu", "parallelism": "single", "model_preset": "demo"},
}

STUB = """#!{python}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({{"prog": os.path.basename(sys.argv[0]), "args": sys.argv[1:], "cwd": os.getcwd(),
                          "MASTER_ADDR": os.environ.get("MASTER_ADDR"),
                          "MASTER_PORT": os.environ.get("MASTER_PORT")}}) + "\\n")
if sys.argv[1:3] == ["show", "hostnames"]:  # scontrol: expand the allocation's node list
    print("\\n".join(f"node{{i:03d}}" for i in range(1, 5)))
"""


@pytest.fixture(scope="module")
def projects(render_projects) -> dict[str, Path]:
    return render_projects(PROJECTS)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    bin_dir = tmp_path_factory.mktemp("bin")
    for prog in ("torchrun", "deepspeed", "srun", "scontrol", "python"):
        path = bin_dir / prog
        path.write_text(STUB.format(python=sys.executable))
        path.chmod(0o755)
    return bin_dir


def run_script(project: Path, script: str, stubs: Path, *args: str, **env: str):
    """Run a generated script with bash and the stand-ins; returns (result, recorded calls)."""
    log = project / "stub-calls.jsonl"
    log.unlink(missing_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "NPROC", "NNODES"))}
    full_env.update(PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}", STUB_LOG=str(log), **env)
    full_env.pop("PYTHON", None)
    result = subprocess.run(
        ["bash", f"scripts/{script}", *args], cwd=project, env=full_env, capture_output=True, text=True, timeout=60
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def only_call(calls: list[dict], prog: str) -> dict:
    mine = [c for c in calls if c["prog"] == prog]
    assert len(mine) == 1, calls
    return mine[0]


@pytest.mark.parametrize("name", list(PROJECTS))
def test_scripts_are_executable_bash(projects, name):
    for script in SCRIPTS:
        path = projects[name] / "scripts" / script
        assert path.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
        assert path.read_text().startswith("#!")
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


# -- torchrun ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["zero3-4x8", "fsdp-4x8"])
def test_torchrun_on_four_nodes_meets_at_the_c10d_rendezvous(projects, stubs, name):
    project = projects[name]
    result, calls = run_script(project, "train_torchrun.sh", stubs, "train.max_steps=5", MASTER_ADDR="node001")
    assert result.returncode == 0, result.stderr
    call = only_call(calls, "torchrun")
    assert call["args"] == [
        "--nnodes",
        "4",
        "--nproc_per_node",
        "8",
        "--rdzv_id",
        f"proj-{name}",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "node001:29500",
        *TRAIN,
        "train.max_steps=5",
    ]
    assert Path(call["cwd"]) == project  # launched from the project root, wherever it was called from


def test_torchrun_on_several_nodes_needs_the_rendezvous_host(projects, stubs):
    result, calls = run_script(projects["zero3-4x8"], "train_torchrun.sh", stubs)
    assert result.returncode != 0 and not calls
    assert "MASTER_ADDR" in result.stderr and "first node" in result.stderr


def test_torchrun_on_one_node_is_standalone(projects, stubs):
    result, calls = run_script(projects["zero2-8"], "train_torchrun.sh", stubs, "--resume")
    assert result.returncode == 0, result.stderr
    assert only_call(calls, "torchrun")["args"] == [
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "8",
        *TRAIN,
        "--resume",
    ]


@pytest.mark.parametrize("name", ["zero3-4x8", "zero2-8", "cpu"])
def test_the_cpu_tip_runs_on_one_machine_as_written(projects, stubs, name):
    """The comment's CPU tip, run as written (tests/generator/test_roadmap_commands.py runs it for real):
    one node with a standalone rendezvous, whatever the project's node count, and no MASTER_ADDR needed."""
    project = projects[name]
    lines = (project / "scripts" / "train_torchrun.sh").read_text().splitlines()
    tip = next(line.removeprefix("#   ") for line in lines if line.startswith("#   ") and "train.device=cpu" in line)
    words = tip.split()
    start = words.index("bash")
    settings, args = words[:start], words[start + 2 :]
    assert f"checkpoint.dir=runs/proj-{name}-cpu-ddp" in args and "train.max_steps=10" in args
    result, calls = run_script(project, "train_torchrun.sh", stubs, *args, **dict(s.split("=") for s in settings))
    assert result.returncode == 0, result.stderr
    assert only_call(calls, "torchrun")["args"] == [
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        *TRAIN,
        *args,
    ]


def test_slurm_job_takes_the_process_count_from_nproc_per_node(projects, stubs):
    result, calls = run_script(
        projects["fsdp-4x8"],
        "slurm.sbatch",
        stubs,
        SLURM_JOB_NODELIST="node[001-004]",
        SLURM_NNODES="1",
        SLURM_JOB_ID="7",
        NPROC_PER_NODE="2",
    )
    args = only_call(calls, "srun")["args"]
    assert result.returncode == 0 and args[args.index("--nproc_per_node") + 1] == "2"


def test_process_count_can_be_lowered_to_try_a_strategy_on_a_cpu(projects, stubs):
    _, calls = run_script(projects["cpu"], "train_torchrun.sh", stubs, "distributed.strategy=ddp", NPROC_PER_NODE="2")
    args = only_call(calls, "torchrun")["args"]
    assert args[args.index("--nproc_per_node") + 1] == "2" and args[-1] == "distributed.strategy=ddp"


# -- SLURM -------------------------------------------------------------------------------------------


def sbatch_options(path: Path) -> dict[str, str]:
    options = {}
    for line in path.read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            options[key] = value
    return options


@pytest.mark.parametrize("name", ["zero3-4x8", "fsdp-4x8"])
def test_slurm_job_runs_one_torchrun_per_node_with_the_head_node_as_rendezvous(projects, stubs, name):
    project = projects[name]
    options = sbatch_options(project / "scripts" / "slurm.sbatch")
    assert (options["--nodes"], options["--ntasks-per-node"], options["--gpus-per-node"]) == ("4", "1", "8")
    assert options["--job-name"] == f"proj-{name}"
    result, calls = run_script(
        project,
        "slurm.sbatch",
        stubs,
        "train.max_steps=5",
        SLURM_JOB_NODELIST="node[001-004]",
        SLURM_NNODES="4",
        SLURM_JOB_ID="4242",
        SLURM_SUBMIT_DIR=str(project),
    )
    assert result.returncode == 0, result.stderr
    assert only_call(calls, "scontrol")["args"] == ["show", "hostnames", "node[001-004]"]
    srun = only_call(calls, "srun")
    assert srun["args"] == [
        "--kill-on-bad-exit=1",
        "torchrun",
        "--nnodes",
        "4",
        "--nproc_per_node",
        "8",
        "--rdzv_id",
        "4242",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "node001:29500",
        *TRAIN,
        "train.max_steps=5",
    ]
    assert (srun["MASTER_ADDR"], srun["MASTER_PORT"]) == ("node001", "29500")  # exported to every task


def test_slurm_job_on_cpu_asks_for_no_gpus(projects):
    options = sbatch_options(projects["cpu"] / "scripts" / "slurm.sbatch")
    assert options["--nodes"] == "1" and "--gpus-per-node" not in options


# -- DeepSpeed launcher ------------------------------------------------------------------------------


def test_deepspeed_launcher_on_four_nodes_reads_a_hostfile(projects, stubs):
    project = projects["zero3-4x8"]
    result, calls = run_script(project, "train_deepspeed.sh", stubs)
    assert result.returncode == 2 and not calls
    assert "hostfile not found" in result.stderr and "slots=8" in result.stderr
    (project / "hostfile").write_text("".join(f"node{i:03d} slots=8\n" for i in range(1, 5)))
    try:
        result, calls = run_script(project, "train_deepspeed.sh", stubs, "--resume")
    finally:
        (project / "hostfile").unlink()
    assert result.returncode == 0, result.stderr
    assert only_call(calls, "deepspeed")["args"] == [
        "--hostfile",
        "hostfile",
        "--num_nodes",
        "4",
        "--master_addr",
        "node001",
        "--master_port",
        "29500",
        "--num_gpus",
        "8",
        "--no_local_rank",
        "--module",
        *TRAIN[1:],
        "--resume",
    ]


def test_deepspeed_launcher_on_one_node(projects, stubs):
    result, calls = run_script(projects["zero2-8"], "train_deepspeed.sh", stubs)
    assert result.returncode == 0, result.stderr
    assert only_call(calls, "deepspeed")["args"] == ["--num_gpus", "8", "--no_local_rank", "--module", *TRAIN[1:]]


# -- one device --------------------------------------------------------------------------------------


def test_train_sh_runs_one_process(projects, stubs):
    _, calls = run_script(projects["cpu"], "train.sh", stubs, "train.max_steps=3")
    assert only_call(calls, "python")["args"] == [*TRAIN, "train.max_steps=3"]
    # A project configured for many GPUs runs as one process here (a pipeline check), not its strategy.
    _, calls = run_script(projects["zero3-4x8"], "train.sh", stubs, "model.preset=tiny")
    assert only_call(calls, "python")["args"] == [*TRAIN, "distributed.strategy=single", "model.preset=tiny"]


# -- configs/deepspeed.json --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "world", "stage"), [("zero3-4x8", 32, 3), ("zero2-8", 8, 2)])
def test_deepspeed_json_batch_arithmetic_matches_train_toml(projects, name, world, stage):
    project = projects[name]
    cfg = load_config(project / "configs" / "train.toml")
    ds = json.loads((project / "configs" / "deepspeed.json").read_text())
    t = cfg.train
    assert ds["train_batch_size"] == t.micro_batch * t.grad_accum * world
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (t.micro_batch, t.grad_accum)
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["gradient_clipping"] == t.grad_clip
    assert ds["bf16"]["enabled"] is True and t.dtype == "bfloat16"  # H100: the plan picked bf16
    # The file is the library builder's own output (the deepspeed answer), so check agrees with it.
    assert ds_config.disagreements(ds, cfg, world, bf16=True) == []
    assert ds == ds_config.build(cfg, world, bf16=True)


@pytest.mark.parametrize("name", ["fsdp-4x8", "cpu"])
def test_no_deepspeed_json_without_zero(projects, name):
    assert not (projects[name] / "configs" / "deepspeed.json").exists()
    assert load_config(projects[name] / "configs" / "train.toml").distributed.strategy == PROJECTS[name]["parallelism"]
