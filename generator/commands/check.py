"""`llmgen check`: pre-flight checks inside a generated project, before anything is launched.

A cluster job that fails after queueing for hours on a batch-size typo is expensive. This reads what
the launch would read (configs/train.toml, configs/deepspeed.json, the WORLD_SIZE a launcher sets, the
corpus data.corpus names) and what the project was generated for (.copier-answers.yml: nodes, GPUs per
node, GPU model, budget), and checks that they agree: world size, strategy, batch sizes, the DeepSpeed
config, sequence length, whether DeepSpeed is installed where it is needed; then the plan itself, with
the invariants `llmgen new` warns about (`generator.estimate.invariants.problems`, the same function):
memory per device, tokens per step, steps and warm-up, learning rate, epochs of the corpus, budget.
"ready" exactly when none fails. Prints a table, or one JSON document with `--json`; exits 2 when any
check fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from generator.errors import LLMGenError
from generator.estimate import Estimate, parse_budget, parse_hardware, recipe
from generator.estimate.budget import Budget
from generator.estimate.hardware import Hardware
from generator.estimate.invariants import corpus_size, facts_for, problems
from generator.questions import DIR_HELP
from generator.yaml_files import read_yaml
from reference_llm.config import Dtype, RunConfig, Strategy, check_parallel_layout, load_config
from reference_llm.distributed import ds_config
from reference_llm.errors import ReferenceLLMError

ANSWERS = ".copier-answers.yml"
TRAIN_CONFIG = "configs/train.toml"
OK, WARN, FAIL = "ok", "warn", "fail"
# The memory check never uses the CPU's matmul peak, so it is not measured (that takes seconds).
_MEMORY_ONLY_TFLOPS = 1.0


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    message: str


@dataclass
class Project:
    """What the launch will read, and what the project was generated for."""

    root: Path
    answers: dict[str, Any]
    config: RunConfig
    hardware: Hardware
    world_size: int  # WORLD_SIZE from the environment when set, else nodes x GPUs per node
    cpu_peak_known: bool = True  # a CPU project recorded the peak its plan was made with

    @property
    def planned_world(self) -> int:
        return self.hardware.n_gpus


def check(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="section.key=value", help="The config overrides you will launch with.", show_default=False
        ),
    ] = None,
    directory: Annotated[Path, typer.Option("--dir", help=f"{DIR_HELP} (default: here).")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout, nothing else.")] = False,
) -> None:
    """Check, before launching, that world size, batch sizes, DeepSpeed config, memory and the plan hold."""
    project, checks = load_project(directory, overrides or [])
    if project is not None:
        checks += run_checks(project)
    failed = any(c.status == FAIL for c in checks)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": not failed,
                    "world_size": project.world_size if project else None,
                    "checks": [c.__dict__ for c in checks],
                },
                indent=2,
            )
        )
    else:
        print_checks(checks, project)
    if failed:
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add `check` to the `llmgen` Typer app."""
    app.command("check")(check)


# ----------------------------------------------------------------------------------------------------
# Reading the project
# ----------------------------------------------------------------------------------------------------


def load_project(directory: Path, overrides: list[str]) -> tuple[Project | None, list[Check]]:
    """The project, or None with the failed checks that say why it could not be read."""
    answers_path, config_path = directory / ANSWERS, directory / TRAIN_CONFIG
    if not answers_path.is_file() or not config_path.is_file():
        missing = answers_path if not answers_path.is_file() else config_path
        raise LLMGenError(f"{missing} not found: run llmgen check inside a generated project, or pass --dir")
    checks: list[Check] = []
    try:
        answers = read_yaml(answers_path, str(answers_path))
        if not isinstance(answers, dict):
            raise ValueError("not a mapping")
        # A CPU project's plan (and its budget) used the peak recorded with its roadmap.
        recorded = (answers.get("roadmap") or {}).get("cpu_tflops")
        hardware = parse_hardware(str(answers["hardware"]), cpu_tflops=recorded or _MEMORY_ONLY_TFLOPS)
    except (yaml.YAMLError, ValueError, KeyError, LLMGenError) as exc:
        checks.append(Check("answers", FAIL, f"{answers_path} is unreadable ({exc}); regenerate with llmgen update"))
        return None, checks
    try:
        config = load_config(config_path, overrides)
    except ReferenceLLMError as exc:
        # Includes train.seq_len > model.block_size: load_config refuses it.
        checks.append(Check("train config", FAIL, str(exc)))
        return None, checks
    checks.append(
        Check("train config", OK, f"{config_path} loads: {config.model.name}, strategy {config.distributed.strategy}")
    )
    env_world = os.environ.get("WORLD_SIZE")
    try:
        world = int(env_world) if env_world is not None else hardware.n_gpus
    except ValueError:
        checks.append(Check("world size", FAIL, f"WORLD_SIZE={env_world!r} is not an integer"))
        return None, checks
    return Project(directory, answers, config, hardware, world, cpu_peak_known=bool(recorded)), checks


# ----------------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------------


def run_checks(p: Project) -> list[Check]:
    return [
        check_world_size(p),
        check_strategy(p),
        check_batch(p),
        check_sequence(p),
        *check_deepspeed(p),
        *check_plan(p),
    ]


def check_world_size(p: Project) -> Check:
    hw, strategy = p.hardware, p.config.distributed.strategy
    plan = f"{hw.nodes} node{'s' if hw.nodes > 1 else ''} x {hw.gpus_per_node} = {hw.n_gpus}"
    if p.world_size != hw.n_gpus:
        return Check(
            "world size",
            FAIL,
            f"WORLD_SIZE={p.world_size} but the project is planned for {plan} "
            f"processes ({ANSWERS}); launch {hw.n_gpus} processes or regenerate for this hardware",
        )
    if strategy == Strategy.SINGLE and p.world_size > 1:
        return Check(
            "world size",
            FAIL,
            f"distributed.strategy=single runs one process, but the world size is "
            f"{p.world_size}; use ddp, fsdp or zero1-3",
        )
    d = p.config.distributed
    try:  # the library's own rule for the tensor/pipeline layout at this world size
        check_parallel_layout(p.config.model, d.strategy, d.tp, d.pp, p.world_size)
    except ReferenceLLMError as exc:
        return Check("world size", FAIL, str(exc))
    source = "WORLD_SIZE" if "WORLD_SIZE" in os.environ else ANSWERS
    return Check("world size", OK, f"{p.world_size} process{'es' if p.world_size > 1 else ''} ({plan}, from {source})")


def check_strategy(p: Project) -> Check:
    strategy, planned = p.config.distributed.strategy, p.answers.get("parallelism")
    if strategy in ds_config.STAGES and importlib.util.find_spec("deepspeed") is None:
        return Check(
            "strategy",
            FAIL,
            f"distributed.strategy={strategy} needs DeepSpeed, which is not installed: pip install 'llmgen[deepspeed]'",
        )
    if planned and strategy != planned:
        return Check(
            "strategy",
            WARN,
            f"{strategy} in {TRAIN_CONFIG}, but the project was generated for "
            f"{planned} (its scripts and estimates assume {planned})",
        )
    return Check("strategy", OK, strategy + (" (DeepSpeed installed)" if strategy in ds_config.STAGES else ""))


def check_batch(p: Project) -> Check:
    t, d = p.config.train, p.config.distributed
    replicas = p.world_size // (d.tp * d.pp)  # the ranks of one tp/pp replica read the same batches
    per_step = t.micro_batch * t.grad_accum * replicas
    units = f"{replicas}" if replicas == p.world_size else f"{replicas} replica{'s' if replicas != 1 else ''}"
    text = (
        f"{t.micro_batch} x {t.grad_accum} accumulation x {units} = {per_step} sequences, "
        f"{per_step * p.config.seq_len:,} tokens per step"
    )
    planned = {k: p.answers.get(k) for k in ("micro_batch", "grad_accum")}
    differ = [
        f"{k}={getattr(t, k)} (generated with {v})" for k, v in planned.items() if v is not None and getattr(t, k) != v
    ]
    if differ:
        return Check("batch", WARN, f"{text}; {', '.join(differ)}: the plan's token count and time assume the latter")
    return Check("batch", OK, text)


def check_sequence(p: Project) -> Check:
    # load_config already refused seq_len > block_size; this row shows what the run will use.
    return Check("sequence", OK, f"seq_len {p.config.seq_len} <= block_size {p.config.model.block_size}")


def expected_bf16(p: Project) -> bool:
    """Whether training runs in bf16 on the target devices (train.dtype, "auto" resolved by reference_llm's
    rule for them; a CPU project's device is this machine)."""
    return p.hardware.compute_precision(p.config.train.dtype) == Dtype.BFLOAT16


def check_deepspeed(p: Project) -> list[Check]:
    path = p.root / p.config.distributed.deepspeed_config
    if p.config.distributed.strategy not in ds_config.STAGES:
        if path.is_file():
            return [
                Check(
                    "deepspeed config",
                    WARN,
                    f"{path.name} is ignored: distributed.strategy="
                    f"{p.config.distributed.strategy} does not use DeepSpeed",
                )
            ]
        return []
    try:
        ds = ds_config.load(path)
    except ReferenceLLMError as exc:
        return [Check("deepspeed config", FAIL, str(exc))]
    problems = ds_config.disagreements(ds, p.config, p.world_size, expected_bf16(p), name=path.name)
    if problems:
        return [Check("deepspeed config", FAIL, problem) for problem in problems]
    full = ds_config.complete(ds, p.config, p.world_size)
    return [
        Check(
            "deepspeed config",
            OK,
            f"{path.name}: stage {ds['zero_optimization']['stage']}, "
            f"train_batch_size {full['train_batch_size']} = {full['train_micro_batch_size_per_gpu']} x "
            f"{full['gradient_accumulation_steps']} x {p.world_size}",
        )
    ]


# The invariants' names, in the order the rows are shown, with what an "ok" row says.
PLAN_ROWS = ("memory", "batch", "steps", "warm-up", "learning rate", "data", "budget")


def check_plan(p: Project) -> list[Check]:
    """One row per invariant of the plan (`invariants.problems`): failed with the figures and the fix,
    or ok with what holds."""
    corpus = corpus_size(p.root, p.config.data)
    try:
        facts = facts_for(p.config, p.hardware, p.world_size, corpus, _budget(p))
    except (LLMGenError, ReferenceLLMError) as exc:
        return [Check("memory", FAIL, f"cannot estimate: {exc}")]
    failed = {problem.name: problem for problem in problems(facts)}
    est, t = facts.estimate, p.config.train
    device = "of RAM" if p.hardware.is_cpu else f"per {p.hardware.gpu.name}"
    memory = (
        f"{est.memory_per_gpu_gib:.1f} GiB needed {device}, {est.memory_usable_gib:.1f} GiB usable ({est.precision})"
    )
    ok = {
        "memory": memory,
        "batch": f"{facts.tokens_per_step:,} tokens per step, near DeepSeek LLM's B_opt for {est.flops_total:.2g} "
        "FLOPs",
        "steps": f"{t.max_steps:,} steps, at least the {recipe.MIN_STEPS} a run needs",
        "warm-up": f"{t.warmup_steps} warm-up steps of {t.max_steps:,}",
        "learning rate": f"lr {t.lr:g} decaying to {t.min_lr:g} for {est.flops_params / 1e6:,.0f}M parameters",
        "data": (
            f"{facts.tokens / facts.corpus_tokens:.2g} epochs of {facts.corpus}"
            if facts.corpus_tokens
            else f"{p.config.data.corpus} not found"
        ),
        "budget": (
            f"{_spent(facts.estimate, facts.budget)} of {facts.budget.describe()}"
            if facts.budget
            else "no budget recorded, or a CPU peak unknown: not checked"
        ),
    }
    rows = []
    for name in PLAN_ROWS:
        if name == "warm-up" and "steps" in failed:
            continue  # the warm-up is judged against a run long enough to have one
        if name in failed:
            problem = failed[name]
            prefix = "does not fit: " if name == "memory" else ""
            detail = memory if name == "memory" else problem.message
            rows.append(Check(name, FAIL, f"{prefix}{detail}; fix: {problem.fix_config}"))
        elif name == "data" and corpus is None:
            rows.append(
                Check(
                    name,
                    FAIL,
                    f"corpus {p.config.data.corpus} not found (data.corpus in {TRAIN_CONFIG}); "
                    "put the training text there or point data.corpus at it",
                )
            )
        else:
            rows.append(Check(name, OK, ok[name]))
    return rows


def _budget(p: Project) -> Budget | None:
    """The budget the project was planned for, when it can be checked here."""
    if p.hardware.is_cpu and not p.cpu_peak_known:
        return None
    try:
        return parse_budget(str(p.answers["budget"]))
    except (KeyError, LLMGenError):
        return None


def _spent(est: Estimate, budget: Budget) -> str:
    if budget.kind == "usd":
        return f"${est.cost_usd:,.2f}"
    if budget.kind == "gpu_hours":
        return f"{est.gpu_hours:,.3g} GPU-hours"
    return f"{est.wall_hours:,.3g} hours"


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------

_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red"}


def print_checks(checks: list[Check], project: Project | None) -> None:
    console = Console(highlight=False)
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 2))
    for column in ("check", "status", "detail"):
        table.add_column(column)
    for c in checks:
        table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.message)
    console.print(table)
    failed = sum(c.status == FAIL for c in checks)
    if failed:
        console.print(f"[bold red]{failed} check{'s' if failed > 1 else ''} failed[/]: fix them before launching")
    elif project is not None:
        console.print(f"ready: {launch_command(project)}")


def launch_command(p: Project) -> str:
    if p.config.distributed.strategy == Strategy.SINGLE:
        return "bash scripts/train.sh"
    if p.hardware.nodes > 1:
        return "sbatch scripts/slurm.sbatch (or scripts/train_torchrun.sh on every node)"
    return "bash scripts/train_torchrun.sh"
