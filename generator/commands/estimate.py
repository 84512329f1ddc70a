"""`llmgen estimate`: cost, time and memory of a training run, or what a budget buys.

`generator/cli.py` calls `register(app)`. Errors are raised as `EstimateError` (one line, exit code 2);
the CLI prints them. With `--json` stdout holds exactly one JSON document.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from generator.errors import EstimateError
from generator.estimate import (
    RunSpec,
    build_model,
    estimate_run,
    formulas,
    parse_budget,
    parse_count,
    parse_hardware,
)
from generator.estimate.api import ARCHS, ATTENTION, AUTO, OFFLOADS, PARALLELISMS, Estimate
from generator.estimate.budget import DEFAULT_BUDGET_HARDWARE, BudgetPlan, plan_budget
from generator.estimate.parse import parse_tokens
from generator.estimate.precision import PRECISIONS, SHORT_NAMES, canonical_precision
from generator.units import duration, si

MODEL, DATA, HW, PAR, OUT = "Model", "Data", "Hardware and cost", "Parallelism and memory", "Output"


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """A flag's parser that accepts exactly `choices` (the estimator's own tuples, so that --help and the
    checks cannot drift apart); anything else is a usage error."""

    def parse(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    return parse


def _metavar(choices: Sequence[str]) -> str:
    return f"[{'|'.join(choices)}]"


def estimate(
    model: Annotated[
        str | None, typer.Option("--model", help="A reference_llm preset (default: demo).", rich_help_panel=MODEL)
    ] = None,
    params: Annotated[
        str | None,
        typer.Option(
            "--params",
            help="Parameter count, e.g. 7B; picks a shape with d_model 64-128 x layers.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            parser=_one_of(ARCHS),
            metavar=_metavar(ARCHS),
            help="Model family (default: the preset's; llama for --params).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    layers: Annotated[int | None, typer.Option("--layers", rich_help_panel=MODEL)] = None,
    d_model: Annotated[int | None, typer.Option("--d-model", rich_help_panel=MODEL)] = None,
    heads: Annotated[int | None, typer.Option("--heads", rich_help_panel=MODEL)] = None,
    kv_heads: Annotated[int | None, typer.Option("--kv-heads", rich_help_panel=MODEL)] = None,
    ffn: Annotated[int | None, typer.Option("--ffn", help="MLP hidden width.", rich_help_panel=MODEL)] = None,
    vocab: Annotated[int | None, typer.Option("--vocab", rich_help_panel=MODEL)] = None,
    seq_len: Annotated[
        int | None,
        typer.Option(
            "--seq-len", help="Training sequence length (default: the model's context).", rich_help_panel=MODEL
        ),
    ] = None,
    tied: Annotated[
        bool | None, typer.Option("--tied/--untied", help="Share input and output embeddings.", rich_help_panel=MODEL)
    ] = None,
    tokens: Annotated[
        str,
        typer.Option(
            "--tokens", help="Training tokens, e.g. 2T, or 'chinchilla' (20 per parameter).", rich_help_panel=DATA
        ),
    ] = "chinchilla",
    hardware: Annotated[
        str | None,
        typer.Option(
            "--hardware",
            help=f"cpu | 8xH100 | 4x8xA100-80GB (default: cpu; {DEFAULT_BUDGET_HARDWARE} for a $ or GPU-hour budget).",
            rich_help_panel=HW,
        ),
    ] = None,
    mfu: Annotated[
        float | None,
        typer.Option(
            "--mfu", help="Model FLOPs utilisation (default: by hardware and strategy, printed).", rich_help_panel=HW
        ),
    ] = None,
    price: Annotated[
        float | None, typer.Option("--price", help="$ per GPU-hour (default: the catalogue's).", rich_help_panel=HW)
    ] = None,
    cpu_tflops: Annotated[
        float | None,
        typer.Option(
            "--cpu-tflops", help="CPU peak instead of measuring (also env LLMGEN_CPU_TFLOPS).", rich_help_panel=HW
        ),
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="'$50k' | '100k gpu-hours' | '8xH100 for 14 days' | 'laptop': the compute-optimal model it buys.",
            rich_help_panel=HW,
        ),
    ] = None,
    parallelism: Annotated[
        str,
        typer.Option(
            "--parallelism", parser=_one_of(PARALLELISMS), metavar=_metavar(PARALLELISMS), rich_help_panel=PAR
        ),
    ] = AUTO,
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel degree (within a node).", rich_help_panel=PAR)] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline stages.", rich_help_panel=PAR)] = 1,
    sequence_parallel: Annotated[
        bool,
        typer.Option(
            "--sequence-parallel/--no-sequence-parallel",
            help="With --tp, Megatron-LM's sequence parallelism and vocabulary-parallel head (reference_llm: neither).",
            rich_help_panel=PAR,
        ),
    ] = False,
    offload: Annotated[
        str | None, typer.Option("--offload", parser=_one_of(OFFLOADS), metavar=_metavar(OFFLOADS), rich_help_panel=PAR)
    ] = None,
    micro_batch: Annotated[
        int | None,
        typer.Option(
            "--micro-batch",
            help="Sequences per GPU per step (default: largest power of 2 up to 32 that fits).",
            rich_help_panel=PAR,
        ),
    ] = None,
    grad_accum: Annotated[int, typer.Option("--grad-accum", rich_help_panel=PAR)] = 1,
    activation_checkpointing: Annotated[
        str,
        typer.Option(
            "--activation-checkpointing",
            parser=_one_of(formulas.CHECKPOINTING),
            metavar=_metavar(formulas.CHECKPOINTING),
            rich_help_panel=PAR,
        ),
    ] = formulas.CHECKPOINTING[0],
    precision: Annotated[
        str,
        typer.Option(
            "--precision", help=f"{' | '.join(PRECISIONS)} (or {', '.join(SHORT_NAMES)}).", rich_help_panel=PAR
        ),
    ] = PRECISIONS[0],
    attention: Annotated[
        str,
        typer.Option(
            "--attention",
            parser=_one_of(ATTENTION),
            metavar=_metavar(ATTENTION),
            help="Attention kernel: auto follows reference_llm (fused except CPU bf16 short contexts).",
            rich_help_panel=PAR,
        ),
    ] = ATTENTION[0],
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document on stdout, nothing else.", rich_help_panel=OUT)
    ] = False,
) -> None:
    """Estimate FLOPs, GPU-hours, wall time, dollars and memory per GPU for a training run, or (with
    --budget) the compute-optimal model a budget buys. Every assumption is printed."""
    plan: BudgetPlan | None = None
    precision = canonical_precision(precision)
    if precision not in PRECISIONS:
        raise EstimateError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    budget_obj = parse_budget(budget, cpu_tflops) if budget is not None else None
    if hardware is not None:
        hw = parse_hardware(hardware, cpu_tflops)
    elif budget_obj is not None and budget_obj.hardware is not None:
        hw = budget_obj.hardware
    elif budget_obj is not None:
        hw = parse_hardware(DEFAULT_BUDGET_HARDWARE)
    else:
        hw = parse_hardware("cpu", cpu_tflops)

    given_params: float | None = None
    if budget_obj is not None:
        if model is not None or params is not None or tokens != "chinchilla":
            raise EstimateError("--budget chooses the model and tokens; leave out --model, --params and --tokens")
        plan = plan_budget(budget_obj, hw, mfu, None, price, precision)
        if budget_obj.kind != "time" and hardware is None:
            plan.notes.append(f"hardware: {DEFAULT_BUDGET_HARDWARE} assumed (give --hardware to change)")
        config = build_model(preset=plan.preset, arch=arch, seq_len=seq_len)
        run_hw = budget_obj.hardware or hw
        token_count: float | str = plan.preset_tokens
    else:
        given_params = parse_count(params, "--params") if params is not None else None
        config = build_model(
            preset=model,
            params=given_params,
            arch=arch,
            layers=layers,
            d_model=d_model,
            heads=heads,
            kv_heads=kv_heads,
            ffn=ffn,
            vocab=vocab,
            seq_len=seq_len,
            tied=tied,
        )
        run_hw = hw
        token_count = parse_tokens(tokens)

    est = estimate_run(
        RunSpec(
            config,
            run_hw,
            token_count,
            params=given_params,
            parallelism=parallelism,
            micro_batch=micro_batch,
            seq_len=seq_len,
            grad_accum=grad_accum,
            tp=tp,
            pp=pp,
            offload=offload,
            activation_checkpointing=activation_checkpointing,
            precision=precision,
            mfu=mfu,
            price=price,
            sequence_parallel=sequence_parallel,
            attention=attention,
        )
    )
    if as_json:
        document: dict[str, Any] = est.to_dict()
        if plan is not None:
            document["budget"] = plan.to_dict()
        typer.echo(json.dumps(document, indent=2))
        return
    console = Console()
    if plan is not None:
        console.print(_budget_table(plan))
    console.print(_estimate_table(est))
    _print_notes(console, est, plan)


def register(app: typer.Typer) -> None:
    """Add `estimate` to the `llmgen` Typer app."""
    app.command("estimate")(estimate)


# ----------------------------------------------------------------------------------------------------
# Human output
# ----------------------------------------------------------------------------------------------------


def _budget_table(plan: BudgetPlan) -> Table:
    table = Table(title=f"What {plan.budget} buys", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "compute", f"{plan.flops:.3g} FLOPs ({si(plan.gpu_hours)} GPU-hours on {plan.hardware}, MFU {plan.mfu:.2f})"
    )
    table.add_row(
        "compute-optimal", f"{si(plan.params)} parameters, {si(plan.tokens)} tokens (Hoffmann et al. 2022, Table 3)"
    )
    table.add_row("20 tokens/param", f"{si(plan.params_rule)} parameters, {si(plan.tokens_rule)} tokens")
    table.add_row(
        "nearest preset",
        f"{plan.preset} ({si(plan.preset_params)} parameters), {si(plan.preset_tokens)} tokens in the same compute",
    )
    return table


def _estimate_table(est: Estimate) -> Table:
    title = f"{est.model} on {est.hardware}: {'fits' if est.fits else 'DOES NOT FIT'}"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "parameters",
        f"{si(est.params)} in the shape; 6·N·D uses N = {si(est.flops_params)} ({est.flops_params_source})",
    )
    table.add_row("tokens", f"{si(est.tokens)} at sequence length {est.seq_len}")
    table.add_row(
        "training FLOPs", f"6·N·D {est.flops:.3g} + attention {est.flops_attention:.3g} = {est.flops_total:.3g}"
    )
    table.add_row("GPU-hours", f"{si(est.gpu_hours)} at MFU {est.mfu:.3f} of {est.peak_tflops:g} TFLOP/s")
    table.add_row(
        "wall time", f"{duration(est.wall_hours)} on {est.n_gpus} device(s)" + (f"; {est.faster}" if est.faster else "")
    )
    table.add_row("cost", f"${est.cost_usd:,.0f} at ${est.price_per_gpu_hour:.2f}/GPU-hour")
    layout = (
        f"{est.strategy}, dp={est.dp}"
        + (f", tp={est.tp}" if est.tp > 1 else "")
        + (f", pp={est.pp}" if est.pp > 1 else "")
        + (f", offload {est.offload}" if est.offload else "")
    )
    table.add_row("parallelism", f"{layout}: {est.strategy_reason}")
    table.add_row(
        "batch",
        f"micro-batch {est.micro_batch} x grad-accum {est.grad_accum} x dp {est.dp} = "
        f"{est.micro_batch * est.grad_accum * est.dp} sequences per step",
    )
    parts = ", ".join(f"{k} {v:.2f}" for k, v in est.memory_breakdown_gib.items() if v > 0)
    table.add_row("memory per GPU", f"{est.memory_per_gpu_gib:.2f} GiB of {est.memory_usable_gib:.1f} usable ({parts})")
    table.add_row("ZeRO paper", f"model states {est.model_states_paper_gib:.2f} GiB per GPU (2+2+12 B/param)")
    if est.cpu_offload_gib_per_node:
        table.add_row("host memory", f"{est.cpu_offload_gib_per_node:.1f} GiB per node for offloaded states")
    inf = est.inference_gib
    table.add_row(
        "inference",
        f"bf16 weights {inf['weights_bf16']:.2f} GiB + KV cache {inf['kv_cache']:.2f} GiB "
        f"(batch {est.micro_batch}, {est.seq_len} tokens)",
    )
    return table


def _print_notes(console: Console, est: Estimate, plan: BudgetPlan | None) -> None:
    console.print("[bold]Assumptions[/bold]")
    for note in ([*plan.notes] if plan else []) + est.assumptions:
        console.print(f"  - {note}", highlight=False)
    if est.suggestions:
        console.print("[bold]To make it fit, change one of[/bold]")
        for tip in est.suggestions:
            console.print(f"  - {tip}", highlight=False)
