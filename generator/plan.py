"""The one planner: from the answers a person gives to every answer the template needs.

`plan_run(name, given)` is the seam between `llmgen new` and `generator.estimate`:

1. budget and hardware agree (`agree`): a budget that names hardware sets it, a dollar or GPU-hour
   budget without hardware is priced on a GPU, a missing budget follows the hardware; a conflict is an
   error naming both flags and a combination that works;
2. tokens: what the budget buys for the model at the estimator's MFU, at most the compute-optimal 20 per
   parameter (Hoffmann et al. 2022), and at most MAX_EPOCHS of the corpus when the corpus can carry a
   run of MIN_STEPS (otherwise the plan is sized for the budget and warns that it needs more text);
3. the batch: DeepSeek LLM's B_opt for the run's compute, no more than leaves MIN_STEPS steps and no less
   than one sequence per data-parallel replica (devices / (tp x pp): the ranks of one tensor- or
   pipeline-parallel replica read the same batches), split into the largest micro-batch that fits and
   accumulation;
4. steps, warm-up, learning rate, intervals (`generator.estimate.recipe`), then the estimate of the
   whole run, and `invariants.problems` on it: what the panel warns about and `llmgen check` fails on;
5. what else the budget could buy: the largest preset it trains compute-optimally.

Answers are in reference_llm's own vocabulary (`reference_llm.config`: Strategy, Dtype names), so the
template writes values as they are; configs/deepspeed.json is `deepspeed_for_answers`, i.e.
`reference_llm.distributed.ds_config.build`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from generator.errors import AnswerError, EstimateError
from generator.estimate import (
    Estimate,
    RunSpec,
    estimate_run,
    formulas,
    invariants,
    parse_budget,
    parse_hardware,
    recipe,
)
from generator.estimate.api import AUTO, check_spec, explain_auto
from generator.estimate.budget import DEFAULT_BUDGET_HARDWARE, LAPTOP_HOURS, Budget, hours_text
from generator.estimate.hardware import Hardware
from generator.estimate.invariants import PlanFacts, Problem
from generator.estimate.precision import canonical_precision
from generator.questions import load_questions, validate
from generator.roadmap import compact_roadmap, roadmap_for_answers
from generator.tracks import Track, TrackDefaults, load_tracks
from generator.units import duration, si
from reference_llm.assets import corpus_path
from reference_llm.config import DataConfig, Dtype, RunConfig, Strategy, config_from_dict
from reference_llm.distributed import ds_config
from reference_llm.model.config import PRESETS, ModelConfig

CORPUS = "data/shakespeare.txt"  # what a generated project trains on until its owner brings data


@dataclass
class RunPlan:
    answers: dict[str, Any]  # every copier.yml answer, validated
    estimate: Estimate  # the whole planned run
    hardware: Hardware
    budget: Budget
    parallelism_reason: str
    layout: str  # how the devices are used: "8 data-parallel", or "tp=2 x 4 data-parallel replicas"
    tokens_note: str  # where the token count came from
    facts: PlanFacts
    problems: list[Problem]  # invariants the plan breaks: warnings, confirmed before rendering
    notes: list[str] = field(default_factory=list)  # how budget and hardware were settled, and why
    offer: str | None = None  # the larger preset the budget would train compute-optimally


# ----------------------------------------------------------------------------------------------------
# Budget and hardware
# ----------------------------------------------------------------------------------------------------


def agree(budget: str | None, hardware: str | None, defaults: TrackDefaults) -> tuple[str, str, list[str]]:
    """(budget, hardware, notes): the two answers to plan with, when either may be missing (None), and a
    note for each that was chosen here. A conflict between two given answers is an AnswerError naming
    both flags and a combination that works."""
    notes: list[str] = []
    if budget is not None and hardware is not None:
        check_agreement(budget, hardware)
        return budget, hardware, notes
    if budget is not None:
        named = parse_budget(budget).hardware
        if named is not None:
            notes.append(f"hardware {named}: the budget names it")
            return budget, str(named), notes
        chosen = defaults.hardware if not parse_hardware(defaults.hardware).is_cpu else DEFAULT_BUDGET_HARDWARE
        kind = "dollar" if parse_budget(budget).kind == "usd" else "GPU-hour"
        notes.append(
            f"hardware {parse_hardware(chosen)}: a {kind} budget is priced on a GPU (pass --hardware to choose another)"
        )
        return budget, chosen, notes
    if hardware is None:
        return defaults.budget, defaults.hardware, notes
    chosen_hw = parse_hardware(hardware)
    default_budget = parse_budget(defaults.budget)
    if default_budget.hardware is not None and str(default_budget.hardware) != str(chosen_hw):
        hours = default_budget.amount if default_budget.kind == "time" else LAPTOP_HOURS
        text = "laptop" if chosen_hw.is_cpu and hours == LAPTOP_HOURS else f"{chosen_hw} for {hours_text(hours)}"
        notes.append(f"budget {text}: the track's '{defaults.budget}' on this hardware (pass --budget to change it)")
        return text, hardware, notes
    if default_budget.kind in ("usd", "gpu_hours") and chosen_hw.is_cpu:
        notes.append(
            f"budget laptop: the track's {defaults.budget} is GPU money or time, not CPU time "
            "(pass --budget 'cpu for 2 hours' for longer)"
        )
        return "laptop", hardware, notes
    return defaults.budget, hardware, notes


def check_agreement(budget: str, hardware: str) -> None:
    """AnswerError when a given budget and given hardware contradict each other."""
    spent, hw = parse_budget(budget), parse_hardware(hardware)
    if spent.hardware is not None and str(spent.hardware) != str(hw):
        raise AnswerError(
            f"--budget '{budget}' runs on {spent.hardware} but --hardware is {hw}; give one of them, "
            f"e.g. --hardware {hw} --budget '{hw} for {hours_text(spent.amount)}'"
        )
    if spent.kind == "usd" and hw.gpu.price_per_hour <= 0:
        raise AnswerError(
            f"--budget '{budget}' is in dollars but --hardware {hw} has no hourly price; use a GPU "
            f"(--hardware {DEFAULT_BUDGET_HARDWARE}) or a time budget (--budget 'cpu for 2 hours')"
        )


def check_parallelism(parallelism: str, hardware: Hardware) -> None:
    """AnswerError naming --parallelism and --hardware when the strategy does not suit the devices
    (copier.yml's validator says why; this adds the hardware and a strategy that works)."""
    if parallelism == AUTO:
        return
    if parallelism not in tuple(Strategy):
        raise AnswerError(f"--parallelism must be one of {AUTO}, {', '.join(Strategy)}; got {parallelism!r}")
    context = {"gpu": hardware.gpu.name, "nodes": hardware.nodes, "gpus_per_node": hardware.gpus_per_node}
    problem = load_questions()["parallelism"].check(parallelism, context)
    if problem:
        raise AnswerError(f"--parallelism: {problem} (--hardware {hardware}; --parallelism auto picks for you)")


def layout_problem(model: ModelConfig, hardware: Hardware, parallelism: str, tp: int, pp: int) -> str | None:
    """Why tp x pp cannot run for `model` on `hardware` under `parallelism` ("auto" counts as the fsdp it
    becomes), or None: the estimator's checks, which apply reference_llm's own `check_parallel_layout`."""
    strategy = Strategy.FSDP.value if parallelism == AUTO and (tp > 1 or pp > 1) else parallelism
    try:
        check_spec(RunSpec(model, hardware, 1.0, parallelism=strategy, tp=tp, pp=pp))
    except EstimateError as err:
        return str(err)
    return None


def layout_choices(model: ModelConfig, hardware: Hardware, tp: int = 1) -> tuple[list[int], list[int]]:
    """(the tp values with pp=1, the pp values with `tp`) that reference_llm runs for `model` on
    `hardware` under fsdp: what `llmgen new` offers, and names when a layout is refused."""
    fsdp = Strategy.FSDP.value
    tps = [t for t in range(1, hardware.gpus_per_node + 1) if not layout_problem(model, hardware, fsdp, t, 1)]
    pps = [p for p in range(1, hardware.n_gpus + 1) if not layout_problem(model, hardware, fsdp, tp, p)]
    return tps, pps


def check_layout(model: ModelConfig, hardware: Hardware, parallelism: str, tp: int, pp: int) -> None:
    """AnswerError naming --tp, --pp, --parallelism, --model and --hardware, and the values that run,
    when reference_llm cannot run the layout."""
    problem = layout_problem(model, hardware, parallelism, tp, pp)
    if problem is None:
        return
    tps, pps = layout_choices(model, hardware)
    works = f"--tp {' | '.join(map(str, tps))}" + (f", or --pp {' | '.join(map(str, pps))}" if len(pps) > 1 else "")
    under = "" if parallelism in (AUTO, Strategy.FSDP) or tps == pps == [1] else " with --parallelism fsdp or auto"
    raise AnswerError(f"{problem} (--model {model.name}, --hardware {hardware}); what runs here: {works}{under}")


# ----------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------


def plan_run(project_name: str, given: Mapping[str, Any], tracks: Mapping[str, Track] | None = None) -> RunPlan:
    """`given` holds track, parallelism (may be "auto"), model_preset, exercises, optionally budget and
    hardware (missing or None: settled by `agree`), tp and pp (missing: 1), micro_batch, grad_accum,
    precision ("auto" or missing: chosen here) and tokens. `tracks`: the loaded tracks (default: load
    them)."""
    tracks = load_tracks() if tracks is None else tracks
    if given.get("track") not in tracks:
        raise AnswerError(f"--track must be one of {', '.join(tracks)}; got {given.get('track')!r}")
    budget_text, hardware_text, notes = agree(
        given.get("budget"), given.get("hardware"), tracks[given["track"]].defaults
    )
    hardware, budget = parse_hardware(hardware_text), parse_budget(budget_text)
    check_parallelism(str(given["parallelism"]), hardware)
    model = ModelConfig.preset(given["model_preset"])
    tp, pp = int(given.get("tp") or 1), int(given.get("pp") or 1)
    check_layout(model, hardware, str(given["parallelism"]), tp, pp)
    seq = model.block_size
    precision = resolve_precision(given.get("precision") or Dtype.AUTO.value, hardware)
    compute_precision = hardware.compute_precision(precision)
    # With tp or pp, "auto" resolves to fsdp, the one strategy that carries them (the estimator's rule).
    base = RunSpec(model, hardware, 1.0, seq_len=seq, precision=compute_precision, tp=tp, pp=pp)
    chosen_at = given.get("micro_batch") or 1
    parallelism = str(given["parallelism"])
    strategy = (
        estimate_run(base.but(micro_batch=chosen_at)).strategy if parallelism == AUTO else Strategy(parallelism).value
    )
    probe = estimate_run(base.but(parallelism=strategy, micro_batch=given.get("micro_batch")))
    fits_micro_batch = probe.micro_batch if not hardware.is_cpu else min(probe.micro_batch, recipe.CPU_MAX_MICRO_BATCH)
    per_token = probe.flops_total  # the probe trains one token
    # The ranks of one tensor- or pipeline-parallel replica read the same batches: the batch is counted
    # over the data-parallel replicas, not the devices.
    devices = hardware.n_gpus // (tp * pp)
    tokenizer = tokenizer_for(model, hardware)
    corpus_tokens = recipe.corpus_tokens(
        corpus_path().stat().st_size, tokenizer, model.vocab_size, DataConfig().val_fraction
    )

    tokens, tokens_note, capped = plan_tokens(given, budget, hardware, model, probe, corpus_tokens, devices * seq)
    micro_batch, grad_accum = plan_batch(given, tokens, per_token, seq, devices, fits_micro_batch)
    micro_batch, grad_accum = pipeline_batch(given, micro_batch, grad_accum, pp)
    per_step = micro_batch * grad_accum * devices * seq
    steps = math.ceil(tokens / per_step) if given.get("tokens") else math.floor(tokens / per_step)
    if not given.get("tokens") and steps < recipe.MIN_STEPS:
        notes.append(f"{recipe.MIN_STEPS} steps, the least that trains anything (ten warm-ups), rather than {steps}")
        steps = recipe.MIN_STEPS
    steps = max(1, steps)
    lr = recipe.learning_rate(formulas.matmul_params(model))
    spec = base.but(
        tokens=float(steps * per_step), parallelism=strategy, micro_batch=micro_batch, grad_accum=grad_accum
    )
    reason = (
        f"auto chose {strategy}: {explain_auto(spec, chosen_at)}" if parallelism == AUTO else f"{strategy}, as given"
    )
    answers = {
        "project_name": project_name,
        "package_name": project_name.replace("-", "_"),
        "track": given["track"],
        "budget": budget_text.strip(),
        "hardware": str(hardware),
        "gpu": hardware.gpu.name,
        "nodes": hardware.nodes,
        "gpus_per_node": hardware.gpus_per_node,
        "parallelism": strategy,
        "model_preset": model.name,
        "tp": tp,
        "pp": pp,
        "tokenizer": tokenizer,
        "vocab_size": model.vocab_size,
        "precision": precision,
        "micro_batch": micro_batch,
        "grad_accum": grad_accum,
        "tokens": steps * per_step,
        "max_steps": steps,
        "warmup_steps": recipe.warmup_steps(steps),
        "learning_rate": lr,
        "min_lr": recipe.min_learning_rate(lr),
        "eval_interval": recipe.eval_interval(steps),
        "checkpoint_interval": recipe.checkpoint_interval(steps),
        "exercises": bool(given["exercises"]),
    }
    # The facts the invariants judge come from the run config the answers describe, as `llmgen check`
    # reads them from the rendered configs/train.toml.
    facts = invariants.facts_for(
        run_config_for(answers), hardware, hardware.n_gpus, (corpus_path().stat().st_size, CORPUS), budget
    )
    est = facts.estimate
    # Last: what is computed from the other answers (the roadmap's per-step estimates need them all).
    answers["deepspeed"] = deepspeed_for_answers(answers, hardware)
    answers["roadmap"] = roadmap_for_answers(answers, tracks, hardware=hardware)
    check_answers(answers)
    # The budget is not spent when the model's compute-optimal tokens or the corpus limit the run.
    offer = larger_preset(model, hardware, budget, compute_precision) if capped in ("compute", "data") else None
    return RunPlan(
        answers=answers,
        estimate=est,
        hardware=hardware,
        budget=budget,
        parallelism_reason=reason,
        layout=layout_text(hardware.n_gpus, tp, pp),
        tokens_note=tokens_note,
        facts=facts,
        problems=invariants.problems(facts),
        notes=notes,
        offer=offer,
    )


def plan_tokens(
    given: Mapping[str, Any],
    budget: Budget,
    hardware: Hardware,
    model: ModelConfig,
    probe: Estimate,
    corpus_tokens: float,
    smallest_step: int,
) -> tuple[float, str, str]:
    """(tokens, where they come from, what limited them: "given", "budget", "compute" or "data")."""
    if given.get("tokens"):
        return float(given["tokens"]), "as given", "given"
    hours = budget.gpu_hours(hardware)
    affordable = hours * 3600.0 * probe.peak_tflops * 1e12 * probe.mfu / probe.flops_total
    optimal = formulas.TOKENS_PER_PARAM * model.num_params()
    if affordable <= optimal:
        tokens, limit = affordable, "budget"
        note = (
            f"what {budget.describe()} buys for {model.name}: {affordable / model.num_params():.3g} tokens per "
            f"parameter at MFU {probe.mfu:.2f} (compute-optimal is {formulas.TOKENS_PER_PARAM:g})"
        )
    else:
        tokens, limit = optimal, "compute"
        note = (
            f"compute-optimal {formulas.TOKENS_PER_PARAM:g} tokens per parameter (Hoffmann et al. 2022); "
            f"{budget.describe()} would buy {si(affordable)} tokens of {model.name}"
        )
    data_cap = recipe.MAX_EPOCHS * corpus_tokens
    if tokens > data_cap and data_cap >= recipe.MIN_STEPS * smallest_step:
        note += (
            f"; capped at {recipe.MAX_EPOCHS:g} epochs of {CORPUS} ({si(data_cap)} tokens; past that, repeated "
            "text adds little: Muennighoff et al. 2023): bring data to train on more"
        )
        return data_cap, note, "data"
    return tokens, note, limit


def plan_batch(
    given: Mapping[str, Any], tokens: float, per_token: float, seq: int, devices: int, fits_micro_batch: int
) -> tuple[int, int]:
    """(micro_batch, grad_accum): given ones are kept; the rest aim at B_opt for the run's compute, at most
    what leaves MIN_STEPS steps, at least one sequence per device."""
    smallest = devices * seq
    floor_cap = tokens / recipe.MIN_STEPS
    target = max(min(recipe.optimal_batch_tokens(per_token * tokens), floor_cap), smallest)
    at_most = target >= floor_cap  # the step floor binds: round down, never below MIN_STEPS steps
    micro_batch, grad_accum = given.get("micro_batch"), given.get("grad_accum")
    if micro_batch and grad_accum:
        return int(micro_batch), int(grad_accum)
    if micro_batch:
        exact = target / (int(micro_batch) * devices * seq)
        return int(micro_batch), max(1, math.floor(exact) if at_most else round(exact))
    if grad_accum:
        return recipe.split_batch(target / int(grad_accum), seq, devices, fits_micro_batch, at_most)[0], int(grad_accum)
    return recipe.split_batch(target, seq, devices, fits_micro_batch, at_most)


def pipeline_batch(given: Mapping[str, Any], micro_batch: int, grad_accum: int, pp: int) -> tuple[int, int]:
    """(micro_batch, grad_accum) with at least `pp` sequences per micro-batch: the pipeline runs one
    sequence per stage micro-batch (reference_llm.config refuses fewer), about the same tokens per step."""
    if micro_batch >= pp:
        return micro_batch, grad_accum
    if given.get("micro_batch"):
        raise AnswerError(
            f"--micro-batch {micro_batch} with --pp {pp}: the pipeline needs at least {pp} sequences per "
            f"micro-batch (one per stage); use --micro-batch {pp} or more"
        )
    return pp, grad_accum if given.get("grad_accum") else max(1, round(micro_batch * grad_accum / pp))


def layout_text(devices: int, tp: int, pp: int) -> str:
    """How the devices are used, for the panel: "8 data-parallel" or "tp=2 x 4 data-parallel replicas"."""
    replicas = devices // (tp * pp)
    if tp == pp == 1:
        return f"{devices} data-parallel" if devices > 1 else "one device"
    split = " x ".join(f"{k}={v}" for k, v in (("tp", tp), ("pp", pp)) if v > 1)
    return f"{split} x {replicas} data-parallel replica{'s' if replicas > 1 else ''} ({devices} devices)"


def larger_preset(model: ModelConfig, hardware: Hardware, budget: Budget, precision: str) -> str | None:
    """What else the budget buys: the largest preset it trains compute-optimally (20 tokens per parameter)
    that fits the hardware, when that is larger than `model`; None otherwise."""
    hours = budget.gpu_hours(hardware)
    best: tuple[ModelConfig, Estimate] | None = None
    for name in PRESETS:
        candidate = ModelConfig.preset(name)
        if candidate.num_params() <= model.num_params():
            continue
        tokens = formulas.TOKENS_PER_PARAM * candidate.num_params()
        est = estimate_run(RunSpec(candidate, hardware, tokens, micro_batch=1, precision=precision))
        if est.fits and est.gpu_hours <= hours and (best is None or candidate.num_params() > best[0].num_params()):
            best = (candidate, est)
    if best is None:
        return None
    candidate, est = best
    cost = "" if hardware.is_cpu else f", ${est.cost_usd:,.0f}"
    return (
        f"{budget.describe()} trains {candidate.name} ({si(candidate.num_params())} parameters) compute-"
        f"optimally: {si(est.tokens)} tokens in {duration(est.wall_hours)} on {hardware}{cost}; pass --model "
        f"{candidate.name} (and bring that much text)"
    )


def tokenizer_for(model: ModelConfig, hardware: Hardware) -> str:
    """char for the character-level presets (a vocabulary too small for byte-level BPE's 256 bytes); the
    from-scratch byte-level BPE on a CPU (quick on a small corpus); the HF trainer on GPUs (corpora of GB)."""
    if model.vocab_size < 257:
        return "char"
    return "bpe" if hardware.is_cpu else "hf-bpe"


def check_answers(answers: dict[str, Any]) -> None:
    """Every answer against its copier.yml validator, in question order (validators see earlier answers),
    as Copier will see them: the roadmap in its compact form (`generator.render` passes that)."""
    questions = load_questions()
    missing = [name for name in questions if name not in answers]
    if missing:
        raise AnswerError(f"answers missing for: {', '.join(missing)}")
    copier_answers = {**answers, "roadmap": compact_roadmap(answers["roadmap"])}
    seen: dict[str, Any] = {}
    for name, question in questions.items():
        validate(question, copier_answers[name], {**copier_answers, **seen})
        seen[name] = copier_answers[name]


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


def run_config_for(answers: Mapping[str, Any]) -> RunConfig:
    """The run config that a project's configs/train.toml describes, from its answers (those before
    llmgen 1.1 recorded no schedule: see `derived_answers`)."""
    a = {**derived_answers(answers), **answers} if "warmup_steps" not in answers else answers
    return config_from_dict(
        {
            "model": {"preset": a["model_preset"]},
            "data": {"corpus": CORPUS, "tokenizer": a["tokenizer"], "vocab_size": a["vocab_size"]},
            "train": {
                "micro_batch": a["micro_batch"],
                "grad_accum": a["grad_accum"],
                "max_steps": a["max_steps"],
                "lr": a["learning_rate"],
                "min_lr": a["min_lr"],
                "warmup_steps": a["warmup_steps"],
                "dtype": a["precision"],
            },
            "distributed": {"strategy": a["parallelism"], "tp": a.get("tp", 1), "pp": a.get("pp", 1)},
        }
    )


def deepspeed_for_answers(answers: Mapping[str, Any], hardware: Hardware | None = None) -> dict[str, Any]:
    """configs/deepspeed.json for a project's answers (`ds_config.build` on the run config its train.toml
    describes); empty for strategies that do not run DeepSpeed, which get no such file."""
    if not Strategy(answers["parallelism"]).zero_stage:
        return {}
    hardware = hardware or parse_hardware(str(answers["hardware"]), cpu_tflops=1.0)
    run_config = run_config_for(answers)
    bf16 = hardware.compute_precision(run_config.train.dtype) == Dtype.BFLOAT16
    return ds_config.build(run_config, world_size=hardware.n_gpus, bf16=bf16)


def derived_answers(answers: Mapping[str, Any]) -> dict[str, Any]:
    """The schedule answers a project made before llmgen recorded them lacks (its train.toml computed
    them in Jinja), from its step count and learning rate, by today's rules."""
    steps, lr = int(answers["max_steps"]), float(answers["learning_rate"])
    model = ModelConfig.preset(str(answers["model_preset"]))
    return {
        "warmup_steps": recipe.warmup_steps(steps),
        "min_lr": recipe.min_learning_rate(lr),
        "eval_interval": recipe.eval_interval(steps),
        "checkpoint_interval": recipe.checkpoint_interval(steps),
        "tokenizer": tokenizer_for(model, parse_hardware(str(answers["hardware"]), cpu_tflops=1.0)),
    }
