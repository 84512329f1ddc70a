"""The estimator: what a training run costs and whether it fits, and what a budget buys.

    from generator.estimate import RunSpec, estimate_run, parse_hardware
    spec = RunSpec(ModelConfig.preset("llama-8b"), parse_hardware("4x8xH100"), tokens=15e12, parallelism="zero3")
    estimate_run(spec).to_dict()

Formulas and their sources: `generator.estimate.formulas`. The default MFU: `mfu` (fitted to the runs in
`published`). GPU catalogue: `hardware`. Precision names: `precision`. The training recipe a plan follows:
`recipe`; what makes a plan signable: `invariants` (used by `llmgen new` and `llmgen check`).
"""

from generator.estimate.api import Estimate, RunSpec, build_model, choose_parallelism, estimate_run
from generator.estimate.budget import Budget, BudgetPlan, nearest_preset, plan_budget
from generator.estimate.hardware import KNOWN_GPUS, GPUSpec, Hardware
from generator.estimate.parse import parse_budget, parse_count, parse_hardware, parse_tokens

__all__ = [
    "Budget",
    "BudgetPlan",
    "Estimate",
    "GPUSpec",
    "Hardware",
    "KNOWN_GPUS",
    "RunSpec",
    "build_model",
    "choose_parallelism",
    "estimate_run",
    "nearest_preset",
    "parse_budget",
    "parse_count",
    "parse_hardware",
    "parse_tokens",
    "plan_budget",
]
