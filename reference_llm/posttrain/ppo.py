"""Proximal Policy Optimization for language models (Schulman et al. 2017), set up as in RLHF
(Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022, "InstructGPT", sec. 3.5).

The policy and a value head share the Transformer body: the value head is a linear layer on the same
final hidden states as the language-model head, estimating at each answer position the return still to
come. Each answer token a_t is an action with reward

    r_t = -beta * (log pi_old(a_t) - log pi_ref(a_t))   (+ the answer's reward at its last token)

so the KL penalty to the frozen reference is paid per token and the reward model's (or toy function's)
score once, at the end. Generalized advantage estimation (Schulman et al. 2016, eq. 16) turns rewards
and values into advantages:

    delta_t = r_t + gamma V(s_{t+1}) - V(s_t),   A_t = sum_l (gamma lambda)^l delta_{t+l},   R_t = A_t + V(s_t)

The advantages are standardised over the micro-batch; the loss is the clipped surrogate plus
`vf_coef` times the clipped value loss 0.5 max((V - R)^2, (V_old + clip(V - V_old, +-value_clip) - R)^2).

The value head is not part of the policy's checkpoint (model.safetensors stays a plain model that
generation, evaluation and export read): it trains with its own AdamW on the same learning-rate
schedule and is saved, with that optimizer's state, as value_head.safetensors in each step directory.

    python -m reference_llm.posttrain.ppo --checkpoint runs/demo-sft [--config FILE] [section.key=value ...]

The config is an SFT config with a [ppo] section: the keys of reference_llm.posttrain.rl.RLConfig, with
`samples` = 1 and `beta` = 0.02 by default, plus the ones below.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reference_llm.errors import CheckpointError, ConfigError
from reference_llm.model import Transformer
from reference_llm.posttrain import rl
from reference_llm.posttrain.rl import Algorithm, RLConfig, Rollout, clipped_surrogate, masked_mean
from reference_llm.train.checkpoint import load_weights
from reference_llm.train.checkpoint_checks import check_weights
from reference_llm.train.files import temp_name

VALUE_HEAD_FILE = "value_head.safetensors"


@dataclass
class PPOConfig(RLConfig):
    samples: int = 1  # PPO needs no group: the value head is the baseline
    beta: float = 0.02  # InstructGPT's KL reward coefficient
    vf_coef: float = 0.1  # weight of the value loss against the policy loss
    value_clip: float = 0.2  # how far one update may move a value estimate from its rollout value
    gamma: float = 1.0  # discount: an answer is one episode, and its reward comes at the end
    lam: float = 0.95  # GAE's lambda: lower trusts the value head more (less variance, more bias)

    def check(self) -> None:
        super().check()
        for key, ok, rule in (
            ("vf_coef", self.vf_coef > 0, "> 0"),
            ("value_clip", self.value_clip > 0, "> 0"),
            ("gamma", 0 <= self.gamma <= 1, "in [0, 1]"),
            ("lam", 0 <= self.lam <= 1, "in [0, 1]"),
        ):
            if not ok:
                raise ConfigError(f"ppo.{key} must be {rule}, got {getattr(self, key)}")


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (N, T) from per-token rewards and values (N, T) over the positions in
    `mask`, which in each row are one contiguous run (the answer). After the last action the value
    is 0: the episode has ended. Both outputs are 0 off the mask."""
    mask = mask.float()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # (N,)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        # Off the mask (padding after the answer, the prompt before it) nothing carries over.
        next_value = values[:, t] * mask[:, t]
        next_advantage = advantages[:, t]
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries (0 elsewhere)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) / torch.sqrt(var + eps) * mask


class PPO(Algorithm):
    def __init__(self, config: PPOConfig, model: nn.Module, device: torch.device) -> None:
        super().__init__(config, model, device)
        self.config: PPOConfig = config
        self.value_head = nn.Linear(cast(Transformer, model).config.d_model, 1, device=device)
        nn.init.zeros_(self.value_head.weight)  # every value starts at 0: no made-up baseline at step 0
        nn.init.zeros_(self.value_head.bias)
        self.optimizer = torch.optim.AdamW(self.value_head.parameters(), weight_decay=0.0)

    def forward(self, policy: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = cast(Transformer, policy)
        hidden = model.hidden_states(idx)  # (N, T, C), one pass for both heads
        return model.lm_head(hidden), self.value_head(hidden).squeeze(-1)  # (N, T, V), (N, T)

    def prepare(self, batch: Rollout) -> None:
        assert batch.old_values is not None  # narrows the type: PPO's forward gives values
        mask = batch.mask
        rewards = -self.config.beta * (batch.old_logprobs - batch.ref_logprobs) * mask  # (N, T)
        last = mask.cumsum(dim=1).argmax(dim=1)  # (N,) the position of each answer's last token
        rewards[torch.arange(rewards.size(0), device=rewards.device), last] += batch.rewards
        advantages, batch.returns = gae(rewards, batch.old_values * mask, mask, self.config.gamma, self.config.lam)
        batch.advantages = whiten(advantages, mask)

    def loss(
        self, batch: Rollout, logprobs: torch.Tensor, values: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        assert values is not None and batch.old_values is not None and batch.returns is not None
        mask, clip = batch.mask, self.config.value_clip
        surrogate, clipped = clipped_surrogate(logprobs, batch.old_logprobs, batch.advantages, self.config.clip)
        values = values.float()
        values_clipped = batch.old_values + (values - batch.old_values).clamp(-clip, clip)
        value_loss = 0.5 * torch.maximum((values - batch.returns) ** 2, (values_clipped - batch.returns) ** 2)
        policy_loss, value_loss = masked_mean(surrogate, mask), masked_mean(value_loss, mask)
        return policy_loss + self.config.vf_coef * value_loss, {
            "clip_frac": float(masked_mean(clipped.float(), mask)),
            "value_loss": float(value_loss.detach()),
        }

    def step(self, lr: float, grad_clip: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.value_head.parameters(), grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, path: Path) -> None:
        """The head's weights and its AdamW moments and step count, as '<name>' and '<name>:<key>'."""
        tensors = {name: p.detach().cpu().contiguous() for name, p in self.value_head.named_parameters()}
        for name, p in self.value_head.named_parameters():
            for key, value in self.optimizer.state.get(p, {}).items():
                tensors[f"{name}:{key}"] = value.detach().cpu().contiguous()
        tmp = path / temp_name(VALUE_HEAD_FILE)
        save_file(tensors, str(tmp))
        os.replace(tmp, path / VALUE_HEAD_FILE)  # a crash leaves no half-written file under the real name

    def load(self, path: Path) -> None:
        file = path / VALUE_HEAD_FILE
        if not file.is_file():
            raise CheckpointError(
                f"{file} is missing: {path} was not written by PPO, or the run stopped while writing it"
            )
        try:
            tensors = load_file(str(file))
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"cannot read {file}: {exc}") from None
        check_weights(tensors, file)
        names = [name for name, _ in self.value_head.named_parameters()]
        load_weights(self.value_head, {name: tensors.pop(name) for name in names if name in tensors})
        state = {}
        for i, name in enumerate(names):
            keys = {flat.partition(":")[2] for flat in tensors if flat.partition(":")[0] == name}
            if keys != {"step", "exp_avg", "exp_avg_sq"}:
                raise CheckpointError(
                    f"{file}: the optimizer state of {name!r} is incomplete or unknown: {sorted(keys)}"
                )
            state[i] = {key: tensors[f"{name}:{key}"] for key in keys}
        self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})


def train_ppo(
    config_path: str | None,
    overrides: tuple[str, ...] | list[str] = (),
    init: str | None = None,
    resume: bool = False,
    reward: rl.RewardFn | None = None,
) -> dict:
    """Run PPO as configured; `reward`, when given, replaces ppo.reward. Returns the final logged metrics."""
    return rl.train_rl("ppo", PPOConfig, PPO, config_path, overrides, init, resume, reward)


def main(argv: list[str]) -> int:
    return rl.main(
        argv,
        "ppo",
        PPOConfig,
        PPO,
        "Proximal Policy Optimization with a value head against a "
        "reward, with a per-token KL penalty to the frozen starting model.",
    )


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
