"""The inverse problem: a budget (dollars, GPU-hours or a machine for a while) -> the compute-optimal
model and token count, and the nearest preset.

Compute C = GPU-hours x 3600 x peak x MFU; then N_opt, D_opt from Hoffmann et al. 2022 Table 3, with the
~20 tokens per parameter rule beside it (both in `formulas`). `llmgen new` asks the other way round, what a
budget buys for a chosen model, in `generator.plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from generator.errors import EstimateError
from generator.estimate import formulas
from generator.estimate.hardware import Hardware
from generator.estimate.mfu import default_mfu
from reference_llm.config import Dtype
from reference_llm.model.config import PRESETS, ModelConfig

LAPTOP_HOURS = 10 / 60  # "laptop": this CPU for ten minutes, long enough to see a loss curve fall
# Dollar and GPU-hour budgets need a GPU to price against when none is named (`llmgen estimate --budget`,
# and `llmgen new` when the track's default hardware is the CPU).
DEFAULT_BUDGET_HARDWARE = "8xH100"


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
        if self.text.strip().lower() == "laptop":
            return f"laptop (this CPU for {hours_text(self.amount)})"
        if self.kind == "usd":
            return f"${self.amount:,.0f}"
        if self.kind == "gpu_hours":
            return f"{self.amount:,.0f} GPU-hours"
        return f"{self.hardware} for {hours_text(self.amount)}"


def hours_text(hours: float) -> str:
    """'10 minutes', '12 hours', '3 days': how a time budget is written."""
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
            "budget": self.budget,
            "hardware": self.hardware,
            "gpu_hours": self.gpu_hours,
            "wall_hours": self.wall_hours,
            "cost_usd": self.cost_usd,
            "mfu": self.mfu,
            "flops": self.flops,
            "compute_optimal": {
                "fit": "Hoffmann et al. 2022, Table 3 (Approach 1)",
                "params": self.params,
                "tokens": self.tokens,
            },
            "rule_of_thumb": {
                "rule": "20 tokens per parameter",
                "params": self.params_rule,
                "tokens": self.tokens_rule,
            },
            "nearest_preset": {"name": self.preset, "params": self.preset_params, "tokens": self.preset_tokens},
            "assumptions": list(self.notes),
        }


def nearest_preset(params: float, presets: dict[str, tuple[str, dict[str, Any]]] = PRESETS) -> ModelConfig:
    """The preset whose parameter count is nearest to `params` on a log scale."""
    configs = [ModelConfig.preset(name) for name in presets]
    return min(configs, key=lambda c: abs(math.log(c.num_params() / params)))


def plan_budget(
    budget: Budget,
    hardware: Hardware,
    mfu: float | None = None,
    peak_tflops: float | None = None,
    price: float | None = None,
    precision: str = Dtype.BFLOAT16.value,
) -> BudgetPlan:
    """Turn `budget` into compute on `hardware` (a 'time' budget brings its own) at `mfu` of `peak_tflops`
    (default: the hardware's peak in `precision`, and the default MFU of the preset the compute buys,
    so that the preset's own estimate spends exactly the budget), then into N_opt and D_opt."""
    if budget.kind == "time":
        assert budget.hardware is not None
        hardware = budget.hardware
    peak = hardware.gpu.peak_tflops(precision) if peak_tflops is None else peak_tflops
    if peak is None:
        raise EstimateError(f"--precision {precision}: {hardware.gpu.name} has no fp8 tensor cores")
    gpu_hours = budget.gpu_hours(hardware, price)
    seconds = gpu_hours * 3600.0 * peak * 1e12
    mfu_note = f"MFU {mfu:.2f} (given)" if mfu is not None else ""
    if mfu is None:
        # The default MFU depends on the model, and the model on the compute: start from the family's base,
        # then take the MFU of the preset that compute buys, twice (the preset rarely changes again).
        mfu = hardware.gpu.mfu
        for _ in range(2):
            preset = nearest_preset(formulas.chinchilla_optimal(seconds * mfu)[0])
            mfu = default_mfu(hardware.gpu, preset, preset.block_size, hardware.nodes, precision)[0]
        mfu_note = f"MFU {mfu:.2f} (the default for {preset.name} on {hardware})"
    flops = seconds * mfu
    n_opt, d_opt = formulas.chinchilla_optimal(flops)
    n_rule, d_rule = formulas.rule_of_thumb_optimal(flops)
    preset = nearest_preset(n_opt)
    rate = hardware.gpu.price_per_hour if price is None else price
    notes = [
        f"compute = {gpu_hours:,.4g} GPU-hours x {peak:g} TFLOP/s peak x {mfu_note}",
        "compute-optimal N, D: Hoffmann et al. 2022 Table 3 (Approach 1), log-log interpolated; beside it D = 20 N",
    ]
    if budget.note:
        notes.insert(0, budget.note)
    # The preset trains on what the compute buys at its own FLOPs per token (6N + attention).
    preset_tokens = flops / preset.flops_per_token(preset.block_size)
    return BudgetPlan(
        budget=budget.describe(),
        hardware=str(hardware),
        gpu_hours=gpu_hours,
        wall_hours=gpu_hours / hardware.n_gpus,
        cost_usd=gpu_hours * rate,
        mfu=mfu,
        flops=flops,
        params=n_opt,
        tokens=d_opt,
        params_rule=n_rule,
        tokens_rule=d_rule,
        preset=preset.name,
        preset_params=preset.num_params(),
        preset_tokens=preset_tokens,
        notes=notes,
    )
