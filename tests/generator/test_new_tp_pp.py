"""`llmgen new` carries tensor and pipeline parallelism: --tp/--pp (asked on the researcher track where
more than one layout runs), refused with one line where reference_llm cannot run the layout, written into
configs/train.toml and named by the launchers; the batch counts data-parallel replicas, not devices; and
the estimator's activation memory for a tp or pp run is the library's (no sequence parallelism, one
sequence per pipeline micro-batch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from generator.cli import app
from generator.estimate import RunSpec, estimate_run, parse_hardware
from generator.plan import plan_run, run_config_for
from reference_llm.config import check_parallel_layout, load_config
from reference_llm.errors import ConfigError
from reference_llm.model.config import ModelConfig

pytestmark = pytest.mark.usefixtures("fixed_cpu")


def run(*args: str, input: str | None = None, env: dict[str, str | None] | None = None):
    return CliRunner().invoke(app, list(args), input=input, env={"COLUMNS": "200", **(env or {})})


@pytest.mark.usefixtures("template_cache")
def test_tp_project_carries_the_layout_and_counts_replicas(tmp_path: Path):
    project = tmp_path / "r"
    result = run(
        "new", "r", "--dir", str(project), "--track", "researcher", "--hardware", "8xH100", "--tp", "2", "--yes",
        "--no-git",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert (answers["parallelism"], answers["tp"], answers["pp"]) == ("fsdp", 2, 1)  # auto becomes fsdp
    train = (project / "configs" / "train.toml").read_text()
    assert '\nstrategy = "fsdp"\n' in train and "\ntp = 2\n" in train and "\npp = 1\n" in train
    # The generated config loads in reference_llm and passes its layout rule on the planned 8 processes.
    config = load_config(project / "configs" / "train.toml")
    assert (config.distributed.tp, config.distributed.pp) == (2, 1)
    check_parallel_layout(config.model, config.distributed.strategy, 2, 1, world_size=8)
    # Tokens per step: 8 GPUs as tp=2 are 4 data-parallel replicas, and the tokens count those.
    seq = config.model.block_size
    per_step = answers["micro_batch"] * answers["grad_accum"] * 4 * seq
    assert answers["tokens"] == answers["max_steps"] * per_step
    assert f"x 4 replicas x {seq} = {per_step:,} tokens per step" in result.stdout
    assert "tp=2 x 4 data-parallel replicas (8 devices)" in result.stdout
    assert "x 4 data-parallel replicas (8 devices / tp 2 / pp 1)" in train
    readme = (project / "README.md").read_text()
    assert "| fsdp (tp=2, pp=1: 4 data-parallel) |" in readme and " × 4 replicas |" in readme
    # The launchers name the layout; the CPU tip of the torchrun script still loads (ddp needs tp = pp = 1).
    torchrun = (project / "scripts" / "train_torchrun.sh").read_text()
    assert "distributed.tp=2, pp=1" in torchrun and "tp * pp = 2" in torchrun
    assert "distributed.tp=2, pp=1" in (project / "scripts" / "slurm.sbatch").read_text()
    tip = next(line for line in torchrun.splitlines() if line.startswith("#   ") and "train.device=cpu" in line)
    overrides = [word for word in tip.split() if "=" in word and "." in word.split("=")[0]]
    assert "distributed.tp=1" in overrides and "distributed.pp=1" in overrides
    assert load_config(project / "configs" / "train.toml", overrides).distributed.strategy == "ddp"
    with pytest.raises(ConfigError, match="need distributed.strategy=fsdp"):  # control: the tip without them
        load_config(project / "configs" / "train.toml", [o for o in overrides if ".tp=" not in o and ".pp=" not in o])
    # llmgen check: ready exactly when the plan carried no warning, failing on the same invariants.
    warnings = {line.split(":")[1].strip() for line in result.stderr.splitlines() if line.startswith("warning: ")}
    checked = run("check", "--dir", str(project), "--json", env={"WORLD_SIZE": None})
    report = json.loads(checked.stdout)
    failed = {r["name"] for r in report["checks"] if r["status"] == "fail"}
    assert report["ok"] == (not warnings) and failed == warnings, (failed, warnings)
    launch = next(r for r in report["checks"] if r["name"] == "batch")  # the config's row (then the plan's)
    assert launch["message"].startswith(f"{answers['micro_batch']} x {answers['grad_accum']} accumulation x 4 replicas")
    assert f"{per_step:,} tokens per step" in launch["message"]
    assert "world size" not in failed


LAYOUTS = {  # flags -> what the one line must name
    "tp does not divide a node": (["--tp", "3", "--model", "gpt2-124m"], ["--tp 3", "--tp 1 | 2 | 4"]),
    "pp does not divide the GPUs": (["--pp", "5", "--model", "gpt2-124m"], ["--pp 5", "8 GPUs"]),
    "pp does not divide the layers": (["--pp", "8", "--model", "gpt2-124m"], ["--pp 8", "model.n_layer=12"]),
    "tp under ddp": (["--tp", "2", "--parallelism", "ddp"], ["--tp 2", "--parallelism ddp", "fsdp or auto"]),
    "pp with data parallelism": (["--pp", "2", "--model", "llama-8b"], ["--pp 2", "launch exactly 2", "--pp 1 | 8"]),
    "pp with tp": (["--tp", "2", "--pp", "4", "--model", "llama-8b"], ["--pp 4", "use pp or tp alone"]),
    "pp with tied embeddings": (
        ["--pp", "2", "--model", "gpt2-124m", "--hardware", "2xA100-80GB"],
        ["--pp 2", "tie_embeddings"],
    ),
    "micro-batch below pp": (
        ["--pp", "8", "--model", "llama-8b", "--micro-batch", "4"],
        ["--micro-batch 4 with --pp 8", "--micro-batch 8"],
    ),
    "tp on cpu": (["--tp", "2", "--hardware", "cpu", "--budget", "laptop"], ["--tp", "--hardware cpu"]),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_a_layout_the_library_cannot_run_is_one_line_exit_2_and_nothing_written(tmp_path: Path, case: str):
    flags, named = LAYOUTS[case]
    target = tmp_path / "x"
    args = ["new", "x", "--dir", str(target), "--track", "researcher", "--hardware", "8xH100", *flags, "--yes"]
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(text in lines[0] for text in named), lines[0]
    assert not target.exists()


def test_tp_is_asked_on_the_researcher_track_with_only_the_values_that_run():
    # track, budget, hardware, parallelism, model, then tp: gpt2-124m's 12 heads on 8 GPUs of a node
    typed = "researcher\n\n8xH100\n\ngpt2-124m\n"
    asked = run("new", "x", "--dry-run", input=typed + "2\n")
    assert asked.exit_code == 0, asked.output
    assert "tp (1 | 2 | 4) [1]:" in asked.stderr and "pp (" not in asked.stderr  # tied embeddings: pp=1 only
    assert "\ntp: 2\n" in asked.stdout and "\nparallelism: fsdp\n" in asked.stdout
    refused = run("new", "x", "--dry-run", input=typed + "3\n")  # piped: a bad answer is an error
    assert refused.exit_code == 2 and "--tp 3" in refused.stderr.strip().splitlines()[-1]
    # Other tracks are asked the five questions they were, with tp = pp = 1 unless --tp/--pp say otherwise.
    other = run("new", "x", "--dry-run", input="practitioner\n$500\n8xH100\n\ngpt2-124m\n")
    assert other.exit_code == 0, other.output
    assert "tp (" not in other.stderr and "\ntp: 1\npp: 1\n" in other.stdout


def test_a_pipeline_plan_has_one_sequence_per_stage_at_least_and_one_replica():
    given = {"track": "researcher", "hardware": "8xH100", "model_preset": "llama-8b", "parallelism": "auto"}
    plan = plan_run("pp", {**given, "exercises": False, "pp": 8})
    a = plan.answers
    assert (a["parallelism"], a["tp"], a["pp"]) == ("fsdp", 1, 8) and a["micro_batch"] >= 8
    seq = ModelConfig.preset("llama-8b").block_size
    assert a["tokens"] == a["max_steps"] * a["micro_batch"] * a["grad_accum"] * 1 * seq  # one replica
    assert plan.facts.devices == 1 and plan.layout == "pp=8 x 1 data-parallel replica (8 devices)"
    config = run_config_for(a)  # config_from_dict checks micro_batch >= pp too
    check_parallel_layout(config.model, config.distributed.strategy, 1, 8, world_size=8)


def test_activation_memory_of_tp_and_pp_runs_is_the_librarys():
    """No sequence parallelism unless asked for (reference_llm's TP replicates norms and the output head);
    a pipeline stage holds one sequence per in-flight micro-batch, whatever train.micro_batch is."""
    model, hw = ModelConfig.preset("llama-1b"), parse_hardware("8xH100")

    def memory(**spec) -> dict[str, float]:
        return estimate_run(RunSpec(model, hw, 1e9, parallelism="fsdp", **spec)).memory_breakdown_gib

    default, megatron = memory(tp=2, micro_batch=2), memory(tp=2, micro_batch=2, sequence_parallel=True)
    assert default == memory(tp=2, micro_batch=2, sequence_parallel=False)
    assert default["activations"] > megatron["activations"] and default["logits"] == 2 * megatron["logits"]
    assert default["logits"] == memory(micro_batch=2)["logits"]  # the whole vocabulary on every tp rank
    llama8 = ModelConfig.preset("llama-8b")

    def stage(micro_batch: int) -> dict[str, float]:
        spec = RunSpec(llama8, hw, 1e9, parallelism="fsdp", pp=8, micro_batch=micro_batch)
        return estimate_run(spec).memory_breakdown_gib

    assert stage(8)["activations"] == stage(16)["activations"]
    no_pp = estimate_run(RunSpec(llama8, hw, 1e9, parallelism="fsdp", micro_batch=8)).memory_breakdown_gib
    assert no_pp["activations"] == pytest.approx(8 * stage(8)["activations"], rel=0.01)  # control


def test_the_refusal_quoted_in_docs_generator_md_is_what_llmgen_prints(tmp_path: Path):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "generator.md").read_text(encoding="utf-8")
    quoted = "error: " + " ".join(doc.split("e.g. `error: ", 1)[1].split("`", 1)[0].split())  # the page's breaks
    result = run("new", "x", "--dir", str(tmp_path / "x"), "--track", "researcher", "--hardware", "8xH100",
                 "--model", "gpt2-124m", "--tp", "3", "--yes")  # fmt: skip
    assert result.exit_code == 2 and result.stderr.strip() == quoted


def test_check_fails_a_launch_that_does_not_fit_the_layout(tmp_path: Path):
    """`llmgen check`'s world-size row applies check_parallel_layout at the launch's world size: a pipeline
    of 4 stages launched on the project's 8 GPUs would need data parallelism, which the library refuses."""
    from generator.commands.check import Project, check_world_size

    given = {"track": "researcher", "hardware": "8xH100", "model_preset": "llama-8b", "parallelism": "fsdp"}
    plan = plan_run("pp", {**given, "exercises": False, "pp": 8})
    planned = Project(tmp_path, plan.answers, run_config_for(plan.answers), plan.hardware, 8)
    assert check_world_size(planned).status == "ok"  # control: the planned layout
    changed = Project(tmp_path, plan.answers, run_config_for({**plan.answers, "pp": 4}), plan.hardware, 8)
    row = check_world_size(changed)
    assert row.status == "fail" and "distributed.pp=4 on 8 processes" in row.message
