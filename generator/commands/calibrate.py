"""`llmgen calibrate RUN_DIR`: a training run's measured speed against what `llmgen estimate` predicted.

A run directory (`checkpoint.dir` of `python -m reference_llm.train`) holds `metrics.jsonl`, one JSON
object per logged step (reference_llm/train/metrics.py), and checkpoints whose `state.json` stores the
run config. From them this command measures tokens/s and MFU after the warm-up steps, estimates the same
plan with the estimator's public seam (`RunSpec` -> `estimate_run`, so no formula is repeated here), and
says how long and how much the rest of the run takes, and what the whole run would take on every GPU of
the catalogue at the MFU this run reached. Torch is never imported (llmgen commands stay light).

Errors are `CalibrateError` (one line, exit code 2, printed by generator/cli.py); `--json` prints one
JSON document on stdout and nothing else there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from generator.errors import CalibrateError
from generator.estimate import KNOWN_GPUS, Estimate, Hardware, RunSpec, estimate_run, parse_hardware
from generator.estimate.cpu_peak import CPU_TFLOPS_ENV
from generator.estimate.precision import SHORT_NAMES
from generator.units import duration, si
from reference_llm.config import Offload, RunConfig, load_config, stored_run_config
from reference_llm.errors import ReferenceLLMError
from reference_llm.train.metrics import read_metrics

# The first steps of a run are slower than the rest: the first forward and backward allocate every
# buffer and fill autocast's weight casts, and `train.compile` = true compiles at step 1 while "auto"
# times 6 forward calls eagerly and compiles at the 7th. Ten steps cover all of that at grad_accum 1.
WARMUP_STEPS = 10
LATEST = "latest"
STATE_FILE = "state.json"
STEP_DIR = re.compile(r"step_\d{7,13}")  # what `latest` may name (reference_llm.train.checkpoint)
MAX_STATE_BYTES = 16 << 20  # a state.json is ~30 KB; reference_llm's checkpoint checks allow 16 MiB
# Peak memory so far in MiB, as the training loop logs it (reference_llm.train.loop.peak_memory_mib): what
# torch allocated on a GPU, the process's peak resident memory on a CPU; 0 where it could not be read.
MEMORY_KEY = "memory_mib"
_SHORT = {full: short for short, full in SHORT_NAMES.items()}  # bfloat16 -> bf16, for a narrow column


@dataclass
class Measured:
    """What the metrics say about speed, from the first logged step at or after the warm-up to the last."""

    first_step: int  # the step whose record opens the measured span (its time is the start)
    last_step: int
    seconds: float  # training time between them (elapsed_s: evaluation and checkpoints excluded)
    tokens_per_step: int  # over every rank
    world_size: int
    matmul_peak_tflops: float  # per device, as the run measured it at start-up (MFU's denominator)
    peak_memory_gib: float | None  # the largest the run logged (a peak so far: the warm-up counts too)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / (self.last_step - self.first_step)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.seconds_per_step


# ----------------------------------------------------------------------------------------------------
# Reading the run
# ----------------------------------------------------------------------------------------------------


def read_run_config(run_dir: Path, config_file: Path | None) -> tuple[RunConfig, str]:
    """The run's config and where it came from: `--config` when given, else the newest checkpoint's
    state.json (the config as the run used it, vocabulary padded to the tokenizer's)."""
    if config_file is not None:
        return load_config(config_file), str(config_file)
    latest = run_dir / LATEST
    if not latest.is_file():
        raise CalibrateError(
            f"{run_dir} has no checkpoint yet (no {LATEST} file): pass --config FILE, the config the run was "
            "started with"
        )
    name = _read_bounded(latest, 256).strip()
    if not STEP_DIR.fullmatch(name):
        raise CalibrateError(f"{latest} must name a step directory like step_0000500, not {name[:40]!r}")
    path = run_dir / name / STATE_FILE
    try:
        state = json.loads(_read_bounded(path, MAX_STATE_BYTES))
    except (ValueError, RecursionError):
        raise CalibrateError(f"{path} is not readable JSON") from None
    stored = state.get("config") if isinstance(state, dict) else None
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        raise CalibrateError(f"{path} holds no run config (is {run_dir} a pretraining run?)")
    try:
        return stored_run_config(stored), str(path)
    except (KeyError, TypeError, ReferenceLLMError) as exc:
        raise CalibrateError(f"{path}: stored run config is invalid ({exc})") from None


def _read_bounded(path: Path, max_bytes: int) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise CalibrateError(f"{path} is not readable ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise CalibrateError(f"{path} is larger than {max_bytes:,} bytes, which no training run writes")
    return data.decode("utf-8", errors="replace")


def training_records(path: Path) -> list[dict[str, Any]]:
    """The training records of a metrics file (evaluation records carry no tokens/s), each checked."""
    if not path.is_file():
        raise CalibrateError(f"no metrics file {path} (is this a run directory? train.metrics_file names it)")
    try:
        records = read_metrics(path)
    except OSError as exc:
        raise CalibrateError(f"{path} is not readable ({exc.strerror or exc})") from None
    except ReferenceLLMError as exc:
        raise CalibrateError(str(exc)) from None
    rows = [r for r in records if "tokens_per_s" in r]
    previous = (0, 0.0)
    for row in rows:
        step: Any = row.get("step")
        if not (isinstance(step, int) and not isinstance(step, bool) and step > 0):
            raise CalibrateError(f"{path}: a training record has step {step!r}; steps are positive integers")
        for key in ("elapsed_s", "tokens_per_s", "mfu"):
            value: Any = row.get(key)
            if not (_is_number(value) and (value > 0 or (key == "elapsed_s" and value == 0))):
                raise CalibrateError(f"{path}: step {step} has {key} {value!r}; expected a positive number")
        if step <= previous[0] or row["elapsed_s"] < previous[1]:
            raise CalibrateError(f"{path}: step {step} does not follow step {previous[0]} in order and time")
        previous = (step, row["elapsed_s"])
    return rows


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def measure(rows: list[dict[str, Any]], config: RunConfig, devices: int, warmup: int, path: Path) -> Measured:
    """Speed over the records after the warm-up: the time from the first record at or after step
    `warmup` to the last, over the steps between them. `devices` is the world size unless the records
    say otherwise."""
    if not rows:
        raise CalibrateError(f"{path} holds no training steps yet: nothing to measure")
    after = [r for r in rows if r["step"] >= warmup]
    if len(after) < 2:
        raise CalibrateError(
            f"{path}: too few steps to measure: training logged up to step {rows[-1]['step']}, and calibrate skips the "
            f"first {warmup} (warm-up) and needs two log lines after them; train longer, log more often "
            "(train.log_interval) or lower --warmup-steps"
        )
    first, last = after[0], after[-1]
    t = config.train
    per_rank = t.micro_batch * t.grad_accum * config.seq_len
    world = devices
    tokens: Any = last.get("tokens")  # pretraining logs tokens seen over every rank: step x tokens/step
    if _is_number(tokens) and tokens > 0 and tokens % (last["step"] * per_rank) == 0:
        world = int(tokens // (last["step"] * per_rank))
    flops_per_token = config.model.flops_per_token(config.seq_len, training=True)
    # The loop logs mfu = tokens/s x FLOPs per token / (measured matmul peak x world size).
    peak = last["tokens_per_s"] * flops_per_token / last["mfu"] / world / 1e12
    memory = [r[MEMORY_KEY] / 1024 for r in rows if _is_number(r.get(MEMORY_KEY)) and r[MEMORY_KEY] > 0]
    return Measured(
        first_step=first["step"],
        last_step=last["step"],
        seconds=last["elapsed_s"] - first["elapsed_s"],
        tokens_per_step=per_rank * world,
        world_size=world,
        matmul_peak_tflops=peak,
        peak_memory_gib=max(memory) if memory else None,
    )


# ----------------------------------------------------------------------------------------------------
# Measured against estimated
# ----------------------------------------------------------------------------------------------------


def run_spec(config: RunConfig, hardware: Hardware, tokens: float, price: float | None) -> RunSpec:
    """The estimator's description of this run's plan, on `hardware`."""
    t, d = config.train, config.distributed
    return RunSpec(
        config.model,
        hardware,
        tokens,
        parallelism=d.strategy,
        micro_batch=t.micro_batch,
        seq_len=config.seq_len,
        grad_accum=t.grad_accum,
        offload=None if d.offload == Offload.NONE else d.offload,
        activation_checkpointing=t.activation_checkpointing,
        precision=hardware.compute_precision(t.dtype),
        price=price,
    )


def calibrate_run(
    run_dir: Path,
    hardware_text: str = "cpu",
    cpu_tflops: float | None = None,
    price: float | None = None,
    config_file: Path | None = None,
    warmup: int = WARMUP_STEPS,
) -> dict[str, Any]:
    """Everything `llmgen calibrate` reports, as the JSON document `--json` prints."""
    if not run_dir.is_dir():
        raise CalibrateError(f"run directory not found: {run_dir}")
    if warmup < 0:
        raise CalibrateError(f"--warmup-steps must be 0 or more, got {warmup}")
    config, config_source = read_run_config(run_dir, config_file)
    if Path(config.train.metrics_file).is_absolute() or ".." in Path(config.train.metrics_file).parts:
        raise CalibrateError(
            f"train.metrics_file {config.train.metrics_file!r} must be a path inside the run directory"
        )
    metrics_path = run_dir / config.train.metrics_file
    rows = training_records(metrics_path)
    # What kind and how many devices (with a placeholder CPU peak, so that nothing is measured for it).
    probe = parse_hardware(hardware_text, cpu_tflops or 1.0)
    measured = measure(rows, config, probe.n_gpus, warmup, metrics_path)
    notes = [
        f"config: {config_source}",
        f"warm-up: the first {warmup} steps are not measured (buffer allocation, autocast's weight casts and "
        f"torch.compile happen in them); measured from the log line of step {measured.first_step} to step "
        f"{measured.last_step}, by the run's training clock (elapsed_s: evaluation and checkpoints excluded)",
    ]
    given = cpu_tflops is not None or bool(os.environ.get(CPU_TFLOPS_ENV))
    if not given and probe.is_cpu:
        cpu_tflops = measured.matmul_peak_tflops  # this run's own measurement of the CPU it ran on
        notes.append(
            f"cpu peak: {cpu_tflops:.3g} TFLOP/s, what the run measured at start-up (from its logged MFU: "
            "tokens/s x FLOPs per token / MFU); --cpu-tflops replaces it"
        )
    hardware = parse_hardware(hardware_text, cpu_tflops)
    if measured.world_size != hardware.n_gpus:
        if not hardware.is_cpu:
            raise CalibrateError(
                f"the run trained on {measured.world_size} device(s) ({measured.tokens_per_step:,} tokens per "
                f"step), --hardware {hardware_text} has {hardware.n_gpus}"
            )
        notes.append(f"{measured.world_size} processes shared the CPU; the estimate counts it as one device")

    if measured.peak_memory_gib is not None and hardware.is_cpu:
        notes.append(
            "memory: on a CPU the run logs the process's peak resident memory, which holds Python, torch and "
            "the data as well as the training state the estimate counts"
        )
    planned_tokens = float(config.train.max_steps * measured.tokens_per_step)
    spec = run_spec(config, hardware, planned_tokens, price)
    est = estimate_run(spec)
    flops_per_token = est.flops_total / est.tokens
    tokens_per_s = measured.tokens_per_s
    # MFU as the estimator defines it: model FLOP/s over the catalogue's (or given) dense peak.
    mfu = tokens_per_s * flops_per_token / (hardware.n_gpus * est.peak_tflops * 1e12)
    at_measured = estimate_run(spec.but(mfu=mfu))
    logged_mfu = tokens_per_s * flops_per_token / (measured.world_size * measured.matmul_peak_tflops * 1e12)

    remaining_steps = max(config.train.max_steps - measured.last_step, 0)
    if config.train.max_minutes > 0:  # the run stops once this much training time is used up
        left_s = max(config.train.max_minutes * 60 - rows[-1]["elapsed_s"], 0.0)
        if int(left_s / measured.seconds_per_step) < remaining_steps:
            remaining_steps = int(left_s / measured.seconds_per_step)
            notes.append(
                f"train.max_minutes = {config.train.max_minutes:g} ends the run at about step "
                f"{measured.last_step + remaining_steps}"
            )
    finish_hours = remaining_steps * measured.seconds_per_step / 3600
    notes.append(
        f"other hardware: the measured MFU {mfu:.4f} carried over unchanged (an assumption: a run's "
        "efficiency depends on the device, its kernels and the model's shape), same layout, micro-batch "
        "and train.dtype; 'default MFU' is the estimator's fitted model for that device"
    )
    return {
        "run_dir": str(run_dir),
        "config": config_source,
        "model": config.model.name,
        "hardware": str(hardware),
        "precision": spec.precision,
        "steps": {
            "logged": rows[-1]["step"],
            "planned": config.train.max_steps,
            "warmup_skipped": warmup,
            "measured_from": measured.first_step,
            "measured_to": measured.last_step,
        },
        "tokens_per_step": measured.tokens_per_step,
        "world_size": measured.world_size,
        "measured": {
            "tokens_per_s": tokens_per_s,
            "seconds_per_step": measured.seconds_per_step,
            "mfu": mfu,
            "mfu_of_measured_peak": logged_mfu,
            "matmul_peak_tflops": measured.matmul_peak_tflops,
            "peak_memory_gib": measured.peak_memory_gib,
            "wall_hours": at_measured.wall_hours,
            "cost_usd": at_measured.cost_usd,
        },
        "estimated": {
            "tokens_per_s": est.tokens / (est.wall_hours * 3600),
            "mfu": est.mfu,
            "peak_tflops": est.peak_tflops,
            "memory_per_gpu_gib": est.memory_per_gpu_gib,
            "wall_hours": est.wall_hours,
            "cost_usd": est.cost_usd,
            "estimate": est.to_dict(),
        },
        "finish": {
            "remaining_steps": remaining_steps,
            "remaining_tokens": remaining_steps * measured.tokens_per_step,
            "hours": finish_hours,
            "cost_usd": finish_hours * hardware.n_gpus * est.price_per_gpu_hour,
            "price_per_gpu_hour": est.price_per_gpu_hour,
        },
        "other_hardware": [_elsewhere(spec, config, hardware, gpu_name, mfu) for gpu_name in KNOWN_GPUS],
        "assumptions": notes,
    }


def _elsewhere(spec: RunSpec, config: RunConfig, hardware: Hardware, name: str, mfu: float) -> dict[str, Any]:
    """The whole run on the same layout of `name` GPUs (one, for a CPU run) at `mfu`."""
    gpu = KNOWN_GPUS[name]
    other = Hardware(1, 1, gpu) if hardware.is_cpu else dataclasses.replace(hardware, gpu=gpu)
    there = spec.but(hardware=other, precision=other.compute_precision(config.train.dtype))
    carried: Estimate = estimate_run(there.but(mfu=mfu))
    default = estimate_run(there)
    return {
        "hardware": str(other),
        "precision": carried.precision,
        "peak_tflops": carried.peak_tflops,
        "tokens_per_s": carried.tokens / (carried.wall_hours * 3600),
        "wall_hours": carried.wall_hours,
        "cost_usd": carried.cost_usd,
        "fits": carried.fits,
        "memory_per_gpu_gib": carried.memory_per_gpu_gib,
        "default_mfu": default.mfu,
        "default_wall_hours": default.wall_hours,
    }


# ----------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------


def calibrate(
    run_dir: Annotated[Path, typer.Argument(help="The run's checkpoint.dir (holds metrics.jsonl).")],
    hardware: Annotated[
        str, typer.Option("--hardware", help="What the run trained on: cpu | 8xH100 | 4x8xA100-80GB.")
    ] = "cpu",
    cpu_tflops: Annotated[
        float | None,
        typer.Option("--cpu-tflops", help="CPU peak (default: the one the run measured; env LLMGEN_CPU_TFLOPS)."),
    ] = None,
    price: Annotated[float | None, typer.Option("--price", help="$ per GPU-hour (default: the catalogue's).")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="The run's config file, for a run with no checkpoint yet.")
    ] = None,
    warmup_steps: Annotated[
        int, typer.Option("--warmup-steps", help=f"Steps not measured (default {WARMUP_STEPS}).")
    ] = WARMUP_STEPS,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout, nothing else.")] = False,
) -> None:
    """Measured tokens/s, MFU and memory of a training run against the estimate for its plan, the time and
    cost to finish it, and the whole run on other GPUs at the measured MFU."""
    if cpu_tflops is not None and not cpu_tflops > 0:
        raise CalibrateError(f"--cpu-tflops must be positive, got {cpu_tflops}")
    report = calibrate_run(run_dir, hardware, cpu_tflops, price, config, warmup_steps)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = Console()
    console.print(_comparison_table(report))
    console.print(_finish_line(report), highlight=False)
    console.print(_elsewhere_table(report))
    console.print("[bold]Assumptions[/bold]")
    for note in report["assumptions"]:
        console.print(f"  - {note}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `calibrate` to the `llmgen` Typer app."""
    app.command("calibrate")(calibrate)


def _gib(gib: float) -> str:
    return f"{gib:.2f} GiB" if gib >= 1 else f"{gib * 1024:.1f} MiB"  # a small model's state is MiB


def _ratio(measured: float | None, estimated: float) -> str:
    return f"{measured / estimated:.2f}x" if measured is not None and estimated > 0 else "-"


def _comparison_table(r: dict[str, Any]) -> Table:
    m, e, s = r["measured"], r["estimated"], r["steps"]
    title = f"{r['model']} on {r['hardware']} ({r['precision']}), step {s['logged']} of {s['planned']}"
    table = Table(title=title, title_justify="left")
    for name in ("", "measured", "estimated", "measured/estimated"):
        table.add_column(name, style="bold" if not name else None)
    table.add_row(
        "tokens/s",
        f"{m['tokens_per_s']:,.0f}",
        f"{e['tokens_per_s']:,.0f}",
        _ratio(m["tokens_per_s"], e["tokens_per_s"]),
    )
    table.add_row(
        f"MFU of {e['peak_tflops']:.3g} TFLOP/s", f"{m['mfu']:.4f}", f"{e['mfu']:.4f}", _ratio(m["mfu"], e["mfu"])
    )
    memory = m["peak_memory_gib"]
    table.add_row(
        "memory per device",
        "not logged" if memory is None else _gib(memory),
        _gib(e["memory_per_gpu_gib"]),
        _ratio(memory, e["memory_per_gpu_gib"]),
    )
    table.add_row(
        f"whole run ({s['planned']:,} steps)",
        duration(m["wall_hours"]),
        duration(e["wall_hours"]),
        _ratio(m["wall_hours"], e["wall_hours"]),
    )
    return table


def _finish_line(r: dict[str, Any]) -> str:
    f = r["finish"]
    if not f["remaining_steps"]:
        return "finished: every planned step is logged"
    return (
        f"to finish: {f['remaining_steps']:,} steps ({si(f['remaining_tokens'])} tokens), "
        f"{duration(f['hours'])}, ${f['cost_usd']:,.2f} at ${f['price_per_gpu_hour']:.2f}/GPU-hour"
    )


def _elsewhere_table(r: dict[str, Any]) -> Table:
    title = f"The whole run elsewhere at the measured MFU {r['measured']['mfu']:.4f}"
    table = Table(title=title, title_justify="left")
    for name in ("hardware", "dtype", "tokens/s", "wall time", "cost", "fits", "at the default MFU"):
        table.add_column(name)
    for row in r["other_hardware"]:
        table.add_row(
            row["hardware"],
            _SHORT.get(row["precision"], row["precision"]),
            f"{row['tokens_per_s']:,.0f}",
            duration(row["wall_hours"]),
            f"${row['cost_usd']:,.2f}",
            "yes" if row["fits"] else "no",
            f"{row['default_mfu']:.2f}: {duration(row['default_wall_hours'])}",
        )
    return table
