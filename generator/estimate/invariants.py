"""What makes a training plan one a practitioner would sign: one function, `problems`, used by both
`llmgen new` (every problem is a warning in the panel, and needs a confirmation) and `llmgen check` (every
problem is a failed check, and the project is not "ready").

A plan is described by `PlanFacts`: the model, the batch, the schedule, where its data is and how much
there is, what the run costs (an `Estimate`) and the budget. `problems` returns what does not hold, each
with the figures and the fix, in config keys (for `llmgen check`) and in flags (for `llmgen new`).
The rules and their sources are in `generator.estimate.recipe`.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path

from generator.estimate import recipe
from generator.estimate.api import Estimate, RunSpec, estimate_run
from generator.estimate.budget import Budget
from generator.estimate.hardware import Hardware
from generator.units import si
from reference_llm.config import DataConfig, Offload, RunConfig
from reference_llm.model.config import ModelConfig

BUDGET_TOLERANCE = 0.01  # rounding the step count may overrun a budget by this much
BRING_DATA = (
    "bring more text: python -m reference_llm.data.manifest add data/<corpus> --license <SPDX id> "
    "--source <where from>, then python -m reference_llm.data.prepare --config configs/train.toml "
    "--corpus data/<corpus> and set data.corpus in configs/train.toml (README.md, 'Your own data')"
)


@dataclass(frozen=True)
class PlanFacts:
    model: ModelConfig
    seq_len: int
    devices: int  # data-parallel processes
    micro_batch: int
    grad_accum: int
    max_steps: int
    warmup_steps: int
    lr: float
    min_lr: float
    estimate: Estimate  # the whole run: max_steps x tokens per step, on its hardware and parallelism
    corpus: str  # where the training text is, for messages
    corpus_tokens: float | None  # tokens in its training split; None when unknown (not checked)
    budget: Budget | None  # None: no budget to hold the run to

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.devices * self.seq_len

    @property
    def tokens(self) -> int:
        return self.max_steps * self.tokens_per_step


@dataclass(frozen=True)
class Problem:
    name: str  # memory | batch | steps | warm-up | learning rate | data | budget
    message: str  # what is wrong, with the figures; one line
    fix_config: str  # the fix in configs/train.toml terms (llmgen check)
    fix_flags: str  # the fix in `llmgen new` flags

    def line(self, flags: bool = False) -> str:
        return f"{self.name}: {self.message}; fix: {self.fix_flags if flags else self.fix_config}"


def facts_for(
    config: RunConfig, hardware: Hardware, devices: int, corpus: tuple[float, str] | None, budget: Budget | None
) -> PlanFacts:
    """The facts of the run `config` describes on `hardware` with `devices` processes: what `llmgen new`
    plans (from the run config its answers describe) and what `llmgen check` reads (configs/train.toml).
    The batch counts the data-parallel replicas, devices / (distributed.tp x pp): the ranks of one replica
    read the same batches. `corpus` is (bytes, description) of the training text, None when it cannot be
    found."""
    t, tp, pp = config.train, config.distributed.tp, config.distributed.pp
    replicas = devices // (tp * pp)  # a world size that tp x pp does not divide is refused by estimate_run
    tokens = float(t.max_steps * t.micro_batch * t.grad_accum * config.seq_len * replicas)
    offload = None if config.distributed.offload == Offload.NONE else str(config.distributed.offload)
    est = estimate_run(
        RunSpec(
            config.model,
            hardware,
            tokens,
            parallelism=str(config.distributed.strategy),
            micro_batch=t.micro_batch,
            seq_len=config.seq_len,
            grad_accum=t.grad_accum,
            tp=tp,
            pp=pp,
            offload=offload,
            precision=hardware.compute_precision(t.dtype),
        )
    )
    data = config.data
    known = (
        recipe.corpus_tokens(corpus[0], data.tokenizer, data.vocab_size, data.val_fraction)
        if corpus is not None
        else None
    )
    return PlanFacts(
        model=config.model,
        seq_len=config.seq_len,
        devices=replicas,
        micro_batch=t.micro_batch,
        grad_accum=t.grad_accum,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_steps,
        lr=t.lr,
        min_lr=t.min_lr,
        estimate=est,
        corpus=corpus[1] if corpus else data.corpus,
        corpus_tokens=known,
        budget=budget,
    )


def batch_bounds(f: PlanFacts) -> tuple[float, float, float]:
    """(B_opt for the run's compute, the smallest batch the hardware allows (one sequence per device),
    the largest batch that leaves MIN_STEPS steps for the run's tokens)."""
    compute = f.model.flops_per_token(f.seq_len) * f.tokens
    return (recipe.optimal_batch_tokens(compute), float(f.devices * f.seq_len), f.tokens / recipe.MIN_STEPS)


def problems(f: PlanFacts) -> list[Problem]:
    """Every invariant of a signable plan that `f` breaks (empty: the plan is ready)."""
    found: list[Problem] = []
    est = f.estimate
    if not est.fits:
        tip = est.suggestions[0] if est.suggestions else "use a bigger GPU or more of them"
        fix = tip if tip.startswith("no single change") else f"the smallest change that fits is {tip}"
        found.append(
            Problem(
                "memory",
                f"{est.memory_per_gpu_gib:.1f} GiB per device needed, {est.memory_usable_gib:.1f} GiB usable",
                f"{fix} (llmgen estimate lists more)",
                fix,
            )
        )
    found += _batch_and_steps(f)
    found += _learning_rate(f)
    found += _data(f)
    found += _budget(f)
    return found


def _batch_and_steps(f: PlanFacts) -> list[Problem]:
    out = []
    b_opt, b_min, b_floor = batch_bounds(f)
    batch = f.tokens_per_step
    # Too big: beyond the band, unless one sequence per device is already more. Too small: below the band
    # around what is right for this run, B_opt or, when the run is short, the batch that leaves it
    # MIN_STEPS steps.
    too_big = batch > max(recipe.BATCH_BAND * b_opt, b_min)
    too_small = batch < min(b_opt, b_floor) / recipe.BATCH_BAND
    if too_big or too_small:
        target = max(min(b_opt, b_floor), b_min)
        mb, accum = recipe.split_batch(target, f.seq_len, f.devices, f.micro_batch)
        out.append(
            Problem(
                "batch",
                f"{batch:,} tokens per step is {batch / b_opt:.2g}x the {si(b_opt)} that DeepSeek LLM's fit "
                f"(B = 0.292·C^0.3271) gives for this run's {f.estimate.flops_total:.2g} FLOPs",
                f"train.micro_batch = {mb}, train.grad_accum = {accum}",
                f"--micro-batch {mb} --grad-accum {accum}",
            )
        )
    if f.max_steps < recipe.MIN_STEPS:
        tokens = recipe.MIN_STEPS * batch
        out.append(
            Problem(
                "steps",
                f"{f.max_steps:,} optimizer steps; a run needs at least {recipe.MIN_STEPS} (ten warm-ups of "
                f"{recipe.MIN_WARMUP}) to learn anything",
                f"train.max_steps = {recipe.MIN_STEPS} ({si(tokens)} tokens)"
                + (", or a smaller batch" if batch > b_min else ""),
                f"--tokens {si(tokens)}" + (" or a smaller --grad-accum/--micro-batch" if batch > b_min else ""),
            )
        )
    elif not recipe.MIN_WARMUP <= f.warmup_steps <= f.max_steps * recipe.MAX_WARMUP_SHARE:
        right = recipe.warmup_steps(f.max_steps)
        out.append(
            Problem(
                "warm-up",
                f"{f.warmup_steps} warm-up steps of {f.max_steps:,}; between {recipe.MIN_WARMUP} and a tenth "
                "of the run",
                f"train.warmup_steps = {right}",
                "(regenerate; the warm-up follows the step count)",
            )
        )
    return out


def _learning_rate(f: PlanFacts) -> list[Problem]:
    rule = recipe.learning_rate(f.estimate.flops_params)
    if rule / recipe.LEARNING_RATE_BAND <= f.lr <= rule * recipe.LEARNING_RATE_BAND and 0 < f.min_lr <= f.lr:
        return []
    return [
        Problem(
            "learning rate",
            f"lr {f.lr:g}, min_lr {f.min_lr:g}; GPT-3's rule for "
            f"{si(f.estimate.flops_params)} parameters is {rule:g} (within 10x either way), decaying to "
            "a tenth",
            f"train.lr = {rule:g}, train.min_lr = {recipe.min_learning_rate(rule):g}",
            "(regenerate; llmgen sets the learning rate from the model size)",
        )
    ]


def _data(f: PlanFacts) -> list[Problem]:
    if f.corpus_tokens is None or f.tokens <= recipe.MAX_EPOCHS * f.corpus_tokens:
        return []
    epochs = f.tokens / max(f.corpus_tokens, 1.0)
    fits_in = recipe.MAX_EPOCHS * f.corpus_tokens / f.tokens_per_step
    shorter = (
        f"; or train.max_steps = {math.floor(fits_in):,} ({recipe.MAX_EPOCHS:g} epochs)"
        if fits_in >= recipe.MIN_STEPS
        else ""
    )
    return [
        Problem(
            "data",
            f"{si(f.tokens)} tokens are {epochs_text(epochs)} of {f.corpus} (about "
            f"{si(f.corpus_tokens)} training tokens); past ~{recipe.MAX_EPOCHS:g} epochs repeated text "
            "adds little (Muennighoff et al. 2023)",
            BRING_DATA + shorter,
            BRING_DATA,
        )
    ]


def _budget(f: PlanFacts) -> list[Problem]:
    if f.budget is None:
        return []
    est, budget = f.estimate, f.budget
    spent, unit = {
        "usd": (est.cost_usd, "$"),
        "gpu_hours": (est.gpu_hours, "GPU-hours"),
        "time": (est.wall_hours, "hours"),
    }[budget.kind]
    if spent <= budget.amount * (1 + BUDGET_TOLERANCE):
        return []
    affordable = max(1, math.floor(f.max_steps * budget.amount / spent))
    figure = f"${spent:,.2f}" if unit == "$" else f"{spent:,.3g} {unit}"
    return [
        Problem(
            "budget",
            f"the run needs {figure}, more than the budget {budget.describe()}",
            f"train.max_steps = {affordable:,} (what the budget buys), or a larger budget",
            f"--tokens {si(affordable * f.tokens_per_step)} or a larger --budget",
        )
    ]


def epochs_text(epochs: float) -> str:
    """'0.5 epochs', '4 epochs', '9,117 epochs'."""
    return f"{epochs:,.0f} epochs" if epochs >= 10 else f"{epochs:.2g} epochs"


# ----------------------------------------------------------------------------------------------------
# How much text a project has
# ----------------------------------------------------------------------------------------------------


def corpus_size(root: Path, data: DataConfig) -> tuple[int, str] | None:
    """(bytes, description) of the text `data` names (data.sources, else data.corpus: a file, a folder or
    a glob), relative to the project `root`; None when none of it exists. Compressed files count at their
    compressed size, so the estimate is low for them."""
    paths = [s.path for s in data.sources] or [data.corpus]
    total, found = 0, False
    for spec in paths:
        path = Path(spec) if Path(spec).is_absolute() else root / spec
        if path.is_file():
            total, found = total + path.stat().st_size, True
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            found = True
        else:
            matches = [Path(m) for m in glob.glob(os.fspath(path), recursive=True)]
            total += sum(m.stat().st_size for m in matches if m.is_file())
            found = found or bool(matches)
    return (total, ", ".join(paths)) if found else None
