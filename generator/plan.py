"""From the answers a person gives to every answer the template needs, through the estimator.

`plan_run` is the one seam between `llmgen new` and `generator.estimate`: it parses the hardware and the
budget, turns the budget into training tokens for the chosen model (the estimator's budget logic),
resolves `auto` parallelism (`choose_parallelism`, with its reason), picks micro-batch, accumulation,
precision and learning rate, and returns the estimate for the run it describes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from generator.errors import AnswerError
from generator.estimate import Estimate, choose_parallelism, estimate_run, formulas, parse_budget, parse_hardware
from generator.estimate.budget import Budget, plan_budget
from generator.estimate.hardware import Hardware
from generator.questions import load_questions, validate
from generator.roadmap import roadmap_for_answers
from reference_llm.model.config import ModelConfig

CPU_MICRO_BATCH = 8  # 8 x 256 tokens keeps a demo step well under a second on a laptop CPU
# Tokens per optimizer step on GPUs: GPT-3 (Brown et al. 2020, Table 2.1) used 0.5M for its small models.
GPU_BATCH_TOKENS = 2**19
# GPUs without bf16 tensor cores (bf16 needs NVIDIA Ampere or newer); they train in fp32 here.
NO_BF16 = frozenset({"T4"})
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
    precision = resolve_precision(given.get("precision") or "auto", hardware)
    est_precision = precision if precision != "auto" else _faster_cpu_precision(hardware)

    parallelism = given["parallelism"]
    if parallelism == "auto":
        parallelism, reason = choose_parallelism(model, hardware, given.get("micro_batch") or 1, seq_len,
                                                 est_precision)
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
    est = estimate_run(model, tokens, hardware, parallelism=parallelism, micro_batch=micro_batch, seq_len=seq_len,
                       precision=est_precision)
    micro_batch = est.micro_batch
    grad_accum = given.get("grad_accum") or default_grad_accum(hardware, micro_batch, seq_len)
    if grad_accum != 1:
        est = estimate_run(model, tokens, hardware, parallelism=parallelism, micro_batch=micro_batch,
                           seq_len=seq_len, grad_accum=grad_accum, precision=est_precision)
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
        "parallelism": parallelism,
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
    # Last: the roadmap is computed from every other answer (its per-step estimates need them all).
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
    """GPUs: bf16 where the GPU has it, else fp32. CPU: "auto" (reference_llm picks bf16 autocast at run
    time where it is faster), unless bf16 or fp32 is given."""
    if precision not in ("auto", "bf16", "fp32"):
        raise AnswerError(f"--precision must be one of auto, bf16, fp32; got {precision!r}")
    if precision != "auto" or hardware.is_cpu:
        return precision
    return "fp32" if hardware.gpu.name in NO_BF16 else "bf16"


def _faster_cpu_precision(hardware: Hardware) -> str:
    """What reference_llm's dtype "auto" will run in on this CPU: the precision with the higher matmul peak."""
    return "bf16" if hardware.gpu.bf16_tflops >= hardware.gpu.fp32_tflops else "fp32"


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
