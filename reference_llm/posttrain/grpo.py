"""Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", sec. 4.1, eq. 3).

GRPO samples a group of G answers to each prompt and uses the group itself as the baseline: an answer's
advantage is its reward standardised within its group, the same for all its tokens (outcome
supervision). There is no value model, which halves what PPO must train and keep in memory:

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)
    loss = -1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) - beta KL_it ]

The KL to the frozen reference is in the loss, not in the reward, estimated per token without bias
by KL_t = pi_ref/pi - log(pi_ref/pi) - 1 (eq. 4; Schulman 2020, "Approximating KL divergence"), which is
never negative. A group whose answers all score the same teaches nothing (every advantage is 0).

    python -m reference_llm.posttrain.grpo --checkpoint runs/demo-sft [--config FILE] [section.key=value ...]

The config is an SFT config with a [grpo] section (the keys of reference_llm.posttrain.rl.RLConfig):

    [grpo]
    init = "runs/sft"           # the starting policy and the frozen reference
    data = "demo"               # prompts: "demo" or a JSONL file with a "prompt" per line
    reward = "model:runs/reward"  # or "toy:target_token=TEXT", "toy:length=N"
    samples = 4                 # the group size G
    beta = 0.04
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from reference_llm.errors import ConfigError
from reference_llm.posttrain import rl
from reference_llm.posttrain.rl import Algorithm, RLConfig, Rollout, clipped_surrogate, masked_mean


@dataclass
class GRPOConfig(RLConfig):
    pass  # DeepSeekMath's defaults are RLConfig's: beta 0.04, eps 0.2, groups of answers to each prompt

    def check(self) -> None:
        super().check()
        if self.samples < 2:
            raise ConfigError(f"grpo.samples must be >= 2 (a group of one answer has no baseline), got {self.samples}")


def group_advantages(rewards: torch.Tensor, group: int, eps: float = 1e-4) -> torch.Tensor:
    """rewards (N,) with each group's G = `group` answers adjacent -> advantages (N,): standardised within
    the group. `eps` keeps a group of equal rewards at 0 instead of 0/0."""
    r = rewards.view(-1, group)  # (N / G, G)
    return ((r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)).flatten()


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate pi_ref/pi - log(pi_ref/pi) - 1 >= 0 (DeepSeekMath eq. 4)."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


class GRPO(Algorithm):
    def prepare(self, batch: Rollout) -> None:
        advantages = group_advantages(batch.rewards, self.config.samples)  # (N,)
        batch.advantages = advantages[:, None] * batch.mask  # (N, T): every token of an answer alike

    def loss(
        self, batch: Rollout, logprobs: torch.Tensor, values: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.mask
        surrogate, clipped = clipped_surrogate(logprobs, batch.old_logprobs, batch.advantages, self.config.clip)
        per_token = surrogate + self.config.beta * kl_estimate(logprobs, batch.ref_logprobs)
        # Mean over each answer's tokens, then over answers: a long answer counts as much as a short one.
        loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1)).mean()
        return loss, {"clip_frac": float(masked_mean(clipped.float(), mask))}


def train_grpo(
    config_path: str | None,
    overrides: tuple[str, ...] | list[str] = (),
    init: str | None = None,
    resume: bool = False,
    reward: rl.RewardFn | None = None,
) -> dict:
    """Run GRPO as configured; `reward`, when given, replaces grpo.reward. Returns the final logged metrics."""
    return rl.train_rl("grpo", GRPOConfig, GRPO, config_path, overrides, init, resume, reward)


def main(argv: list[str]) -> int:
    return rl.main(
        argv,
        "grpo",
        GRPOConfig,
        GRPO,
        "Group Relative Policy Optimization against a reward, with a KL penalty to the frozen starting model.",
    )


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
