"""The inverse problem: a budget (dollars, GPU-hours or a machine for a while) -> the compute-optimal
model and token count, and the nearest preset.

Compute C = GPU-hours x 3600 x peak x MFU; then N_opt, D_opt from Hoffmann et al. 2022 Table 3, with the
~20 tokens per parameter rule beside it (both in `formulas`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from generator.errors import EstimateError
from generator.estimate import formulas
from generator.estimate.hardware import Hardware
from reference_llm.model.config import PRESETS, ModelConfig

LAPTOP_HOURS = 10 / 60  # "laptop": this CPU for ten minutes, long enough to see a loss curve fall


@dataclass(frozen=True)
class Budget:
    """kind 'usd' (amount in dollars), 'gpu_hours' or 'time' (amount in wall-clock hours on `hardware`)."""

    kind: str
    amount: float
    hardware: Hardware | None = None
    text: str = ""
    note: str = ""

    def gpu_hours(self, hardware: Hardware, price: float | None = None) -> float:
        """Device-hours this budget buys on `hardware` (a 'time' budget brings its own hardware)."""
        if self.kind == "time":
            assert self.hardware is not None
            return self.amount * self.hardware.n_gpus
        if self.kind == "gpu_hours":
            return self.amount
        rate = hardware.gpu.price_per_hour if price is None else price
        if rate <= 0:
            raise EstimateError(f"--budget {self.text!r} is in dollars but {hardware} has no price; give --price")
        return self.amount / rate

    def describe(self) -> str:
        if self.kind == "usd":
            return f"${self.amount:,.0f}"
        if self.kind == "gpu_hours":
            return f"{self.amount:,.0f} GPU-hours"
        return f"{self.hardware} for {_hours_text(self.amount)}"


def _hours_text(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} minutes"
    if hours < 48:
        return f"{hours:.3g} hours"
    return f"{hours / 24:.3g} days"


@dataclass
class BudgetPlan:
    """What a budget buys: compute, the compute-optimal model and data, and the nearest preset."""

    budget: str
    hardware: str
    gpu_hours: float
    wall_hours: float
    cost_usd: float
    mfu: float
    flops: float
    params: float  # Hoffmann Table 3
    tokens: float
    params_rule: float  # the 20 tokens/parameter rule
    tokens_rule: float
    preset: str
    preset_params: int
    preset_tokens: float  # tokens the preset can see within the same compute (C / flops per token)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget, "hardware": self.hardware, "gpu_hours": self.gpu_hours,
            "wall_hours": self.wall_hours, "cost_usd": self.cost_usd, "mfu": self.mfu, "flops": self.flops,
            "compute_optimal": {"fit": "Hoffmann et al. 2022, Table 3 (Approach 1)", "params": self.params,
                                "tokens": self.tokens},
            "rule_of_thumb": {"rule": "20 tokens per parameter", "params": self.params_rule,
                              "tokens": self.tokens_rule},
            "nearest_preset": {"name": self.preset, "params": self.preset_params, "tokens": self.preset_tokens},
            "assumptions": list(self.notes),
        }


def nearest_preset(params: float, presets: dict[str, tuple[str, dict[str, Any]]] = PRESETS) -> ModelConfig:
    """The preset whose parameter count is nearest to `params` on a log scale."""
    configs = [ModelConfig.preset(name) for name in presets]
    return min(configs, key=lambda c: abs(math.log(c.num_params() / params)))


def plan_budget(budget: Budget, hardware: Hardware, mfu: float | None = None, peak_tflops: float | None = None,
                price: float | None = None) -> BudgetPlan:
    """Turn `budget` into compute on `hardware` (a 'time' budget brings its own) at `mfu` of
    `peak_tflops` (default: the hardware's bf16 peak and default MFU), then into N_opt and D_opt."""
    if budget.kind == "time":
        assert budget.hardware is not None
        hardware = budget.hardware
    peak_tflops = hardware.gpu.bf16_tflops if peak_tflops is None else peak_tflops
    mfu = hardware.gpu.mfu if mfu is None else mfu
    gpu_hours = budget.gpu_hours(hardware, price)
    flops = gpu_hours * 3600.0 * peak_tflops * 1e12 * mfu
    n_opt, d_opt = formulas.chinchilla_optimal(flops)
    n_rule, d_rule = formulas.rule_of_thumb_optimal(flops)
    preset = nearest_preset(n_opt)
    rate = hardware.gpu.price_per_hour if price is None else price
    notes = [f"compute = {gpu_hours:,.4g} GPU-hours x {peak_tflops:g} TFLOP/s peak x MFU {mfu:.2f}",
             "compute-optimal N, D: Hoffmann et al. 2022 Table 3 (Approach 1), log-log interpolated; "
             "beside it D = 20 N"]
    if budget.note:
        notes.insert(0, budget.note)
    # The preset trains on what the compute buys at its own FLOPs per token (6N + attention).
    preset_tokens = flops / preset.flops_per_token(preset.block_size)
    return BudgetPlan(
        budget=budget.describe(), hardware=str(hardware), gpu_hours=gpu_hours,
        wall_hours=gpu_hours / hardware.n_gpus, cost_usd=gpu_hours * rate, mfu=mfu, flops=flops,
        params=n_opt, tokens=d_opt, params_rule=n_rule, tokens_rule=d_rule, preset=preset.name,
        preset_params=preset.num_params(), preset_tokens=preset_tokens, notes=notes)
