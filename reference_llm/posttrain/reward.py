"""A reward model for RLHF: a Transformer body with a scalar head, trained on preference pairs.

r(x, y) is a linear function of the final hidden state at the last real token of prompt + answer
(Ouyang et al. 2022, "Training language models to follow instructions with human feedback", sec. 3.5;
Stiennon et al. 2020). Training maximises the Bradley-Terry likelihood (Bradley & Terry 1952) that the
chosen answer beats the rejected one:

    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))

A batch holds sequences of different lengths padded on the right; `lengths` says where each one ends,
so the padding value never matters (it is never read by the head, and causal attention keeps real
tokens from seeing the padding after them).

This module is the building block only; see docs/post_training.md for how PPO would use it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_llm.model import Transformer


class RewardModel(nn.Module):
    def __init__(self, backbone: Transformer) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.d_model, 1)
        nn.init.zeros_(self.head.weight)  # every answer starts with reward 0: the loss starts at log 2
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """idx (B, T) right-padded token ids, lengths (B,) real tokens per row -> rewards (B,)."""
        hidden = self.backbone.hidden_states(idx)  # (B, T, C)
        last = hidden[torch.arange(idx.size(0), device=idx.device), lengths - 1]  # (B, C)
        return self.head(last).squeeze(-1)


def pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley-Terry loss (mean over pairs) and accuracy (fraction with chosen scored higher)."""
    diff = chosen_rewards - rejected_rewards
    return -F.logsigmoid(diff).mean(), (diff > 0).float().mean()
