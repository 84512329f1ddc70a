"""The estimator: what a training run costs and whether it fits, and what a budget buys.

    from generator.estimate import estimate_run, parse_hardware, parse_budget, Estimate
    hw = parse_hardware("4x8xH100")
    est = estimate_run(model=ModelConfig.preset("llama-8b"), tokens=15e12, hardware=hw, parallelism="zero3")
    est.to_dict()

Formulas and their sources: `generator.estimate.formulas`. GPU catalogue: `generator.estimate.hardware`.
"""

from generator.estimate.api import Estimate, build_model, choose_parallelism, estimate_run
from generator.estimate.budget import Budget, BudgetPlan, nearest_preset, plan_budget
from generator.estimate.hardware import KNOWN_GPUS, GPUSpec, Hardware
from generator.estimate.parse import parse_budget, parse_count, parse_hardware, parse_tokens

__all__ = [
    "Budget", "BudgetPlan", "Estimate", "GPUSpec", "Hardware", "KNOWN_GPUS", "build_model", "choose_parallelism",
    "estimate_run", "nearest_preset", "parse_budget", "parse_count", "parse_hardware", "parse_tokens", "plan_budget",
]
