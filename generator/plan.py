"""From the answers a person gives to every answer the template needs, through the estimator.

`plan_run` is the one seam between `llmgen new` and `generator.estimate`: it parses the hardware and the
budget, turns the budget into training tokens for the chosen model (the estimator's budget logic),
resolves `auto` parallelism (`choose_parallelism`, with its reason), picks micro-batch, accumulation,
precision and learning rate, and returns the estimate for the run it describes.

Every answer is in reference_llm's own vocabulary (`reference_llm.config`: Strategy, Dtype names), so
the template writes values as they are. Files with structure are built here by the library function
that owns them and handed to the template as data: configs/deepspeed.json is `deepspeed_for_answers`,
i.e. `reference_llm.distributed.ds_config.build`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from generator.errors import AnswerError
from generator.estimate import (
    Estimate,
    RunSpec,
    choose_parallelism,
    estimate_run,
    formulas,
    parse_budget,
    parse_hardware,
)
from generator.estimate.api import AUTO
from generator.estimate.budget import Budget, plan_budget
from generator.estimate.hardware import Hardware
from generator.estimate.precision import canonical_precision
from generator.questions import load_questions, validate
from generator.roadmap import roadmap_for_answers
from reference_llm.config import Dtype, Strategy, config_from_dict
from reference_llm.distributed import ds_config
from reference_llm.model.config import ModelConfig

CPU_MICRO_BATCH = 8  # 8 x 256 tokens keeps a demo step well under a second on a laptop CPU
# Tokens per optimizer step on GPUs: GPT-3 (Brown et al. 2020, Table 2.1) used 0.5M for its small models.
GPU_BATCH_TOKENS = 2**19
# Peak learning rate by parameter count, from GPT-3 (Brown et al. 2020, Table 2.1); below 100M params,
# nanoGPT's 1e-3 for its small Shakespeare models.
LEARNING_RATES = ((1e8, 1e-3), (2e8, 6e-4), (5e8, 3e-4), (1e9, 2.5e-4), (2e9, 2e-4), (4e9, 1.6e-4),
                  (1e10, 1.2e-4), (2e10, 1e-4))
LARGEST_LEARNING_RATE = 6e-5


@dataclass
class RunPlan:
    answers: dict[str, Any]  # every copier.yml answer, validated
    estimate: Estimate
    hardware: Hardware
    budget: Budget
    parallelism_reason: str
    tokens_note: str  # where the token count came from


def plan_run(project_name: str, given: dict[str, Any]) -> RunPlan:
    """`given` holds track, budget, hardware, parallelism (may be "auto"), model_preset, exercises, and
    optionally micro_batch, grad_accum, precision ("auto" or missing: chosen here) and tokens."""
    hardware = parse_hardware(given["hardware"])
    budget = parse_budget(given["budget"])
    model = ModelConfig.preset(given["model_preset"])
    seq_len = model.block_size
    precision = resolve_precision(given.get("precision") or Dtype.AUTO.value, hardware)
    est_precision = hardware.compute_precision(precision)

    parallelism = given["parallelism"]
    if parallelism == AUTO:
        parallelism, reason = choose_parallelism(RunSpec(model, hardware, micro_batch=given.get("micro_batch"),
                                                         seq_len=seq_len, precision=est_precision))
        reason = f"auto chose {parallelism}: {reason}"
    else:
        reason = f"{parallelism}, as given"

    if given.get("tokens"):
        tokens = float(given["tokens"])
        tokens_note = "as given"
    else:
        tokens, tokens_note = budget_tokens(budget, hardware, model, est_precision)

    micro_batch = given.get("micro_batch") or (CPU_MICRO_BATCH if hardware.is_cpu else None)
    # First pass: the estimator picks the largest micro-batch that fits when none is given.
    spec = RunSpec(model, hardware, tokens, parallelism=parallelism, micro_batch=micro_batch, seq_len=seq_len,
                   precision=est_precision)
    est = estimate_run(spec)
    micro_batch = est.micro_batch
    grad_accum = given.get("grad_accum") or default_grad_accum(hardware, micro_batch, seq_len)
    if grad_accum != 1:
        est = estimate_run(spec.but(micro_batch=micro_batch, grad_accum=grad_accum))
    tokens_per_step = micro_batch * grad_accum * seq_len * hardware.n_gpus
    answers = {
        "project_name": project_name,
        "package_name": project_name.replace("-", "_"),
        "track": given["track"],
        "budget": given["budget"].strip(),
        "hardware": str(hardware),
        "gpu": hardware.gpu.name,
        "nodes": hardware.nodes,
        "gpus_per_node": hardware.gpus_per_node,
        "parallelism": Strategy(parallelism).value,  # a plain str, whatever the caller passed
        "model_preset": model.name,
        "vocab_size": model.vocab_size,
        "precision": precision,
        "micro_batch": micro_batch,
        "grad_accum": grad_accum,
        "tokens": max(1, round(tokens)),
        "max_steps": max(1, math.ceil(tokens / tokens_per_step)),
        "learning_rate": learning_rate(model.num_params()),
        "exercises": bool(given["exercises"]),
    }
    # Last: what is computed from the other answers (the roadmap's per-step estimates need them all).
    answers["deepspeed"] = deepspeed_for_answers(answers, hardware)
    answers["roadmap"] = roadmap_for_answers(answers, hardware=hardware)
    check_answers(answers)
    return RunPlan(answers=answers, estimate=est, hardware=hardware, budget=budget, parallelism_reason=reason,
                   tokens_note=tokens_note)


def check_answers(answers: dict[str, Any]) -> None:
    """Every answer against its copier.yml validator, in question order (validators see earlier answers)."""
    questions = load_questions()
    missing = [name for name in questions if name not in answers]
    if missing:
        raise AnswerError(f"answers missing for: {', '.join(missing)}")
    seen: dict[str, Any] = {}
    for name, question in questions.items():
        validate(question, answers[name], {**answers, **seen})
        seen[name] = answers[name]


def resolve_precision(precision: str, hardware: Hardware) -> str:
    """The precision answer (a Dtype name; the short names bf16 and fp32 are accepted). "auto" on GPUs
    becomes what auto means there (`Hardware.auto_dtype`), so that the project's train.toml names it; on
    a CPU it stays "auto": reference_llm applies the same rule at run time, on the machine that trains."""
    precision = canonical_precision(precision)
    if precision not in tuple(Dtype):
        raise AnswerError(f"--precision must be one of {', '.join(Dtype)}; got {precision!r}")
    if precision != Dtype.AUTO or hardware.is_cpu:
        return precision
    return hardware.auto_dtype().value


def deepspeed_for_answers(answers: Mapping[str, Any], hardware: Hardware | None = None) -> dict[str, Any]:
    """configs/deepspeed.json for a project's answers (`ds_config.build` on the run config its train.toml
    describes); empty for strategies that do not run DeepSpeed, which get no such file."""
    if not Strategy(answers["parallelism"]).zero_stage:
        return {}
    hardware = hardware or parse_hardware(str(answers["hardware"]))
    run_config = config_from_dict({
        "model": {"preset": answers["model_preset"]},
        "train": {"micro_batch": answers["micro_batch"], "grad_accum": answers["grad_accum"],
                  "dtype": answers["precision"]},
        "distributed": {"strategy": answers["parallelism"]},
    })
    bf16 = hardware.compute_precision(run_config.train.dtype) == Dtype.BFLOAT16
    return ds_config.build(run_config, world_size=hardware.n_gpus, bf16=bf16)


def budget_tokens(budget: Budget, hardware: Hardware, model: ModelConfig, precision: str) -> tuple[float, str]:
    """Training tokens for `model`: what the budget buys (the estimator's `plan_budget`: GPU-hours x peak
    x default MFU, divided by the model's training FLOPs per token), capped at the compute-optimal 20
    tokens per parameter (Hoffmann et al. 2022): past that point the same compute would train a bigger
    model better, so a larger budget is left unspent rather than spent on over-training."""
    if budget.kind == "usd" and hardware.gpu.price_per_hour <= 0 and budget.hardware is None:
        raise AnswerError(f"--budget {budget.text!r} is in dollars, but {hardware} has no hourly price; give a "
                          "time budget such as 'laptop' or 'cpu for 2 hours'")
    runs_on = budget.hardware or hardware
    peak = runs_on.gpu.peak_tflops(precision)
    assert peak is not None  # bf16 and fp32 peaks exist for every catalogue entry
    mfu = formulas.default_mfu(runs_on.gpu.mfu, precision, 1.0, 1, 1, None)[0]
    plan = plan_budget(budget, hardware, mfu, peak)
    affordable = plan.flops / model.flops_per_token(model.block_size)
    optimal = formulas.TOKENS_PER_PARAM * model.num_params()
    if affordable <= optimal:
        return affordable, (f"what {plan.budget} buys: {affordable / model.num_params():.3g} tokens per parameter "
                            f"(compute-optimal is {formulas.TOKENS_PER_PARAM:g})")
    return optimal, (f"compute-optimal {formulas.TOKENS_PER_PARAM:g} tokens per parameter (Hoffmann et al. 2022); "
                     f"{plan.budget} would buy {affordable:.3g}, pass --tokens to spend it all")


def default_grad_accum(hardware: Hardware, micro_batch: int, seq_len: int) -> int:
    """1 on a CPU; on GPUs enough micro-batches for about GPU_BATCH_TOKENS tokens per optimizer step."""
    if hardware.is_cpu:
        return 1
    return max(1, round(GPU_BATCH_TOKENS / (micro_batch * seq_len * hardware.n_gpus)))


def learning_rate(params: int) -> float:
    for limit, lr in LEARNING_RATES:
        if params < limit:
            return lr
    return LARGEST_LEARNING_RATE
