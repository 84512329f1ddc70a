"""A reward model for RLHF: a Transformer body with a scalar head, trained on preference pairs.

r(x, y) is a linear function of the final hidden state at the last real token of prompt + answer
(Ouyang et al. 2022, "Training language models to follow instructions with human feedback", sec. 3.5;
Stiennon et al. 2020). Training maximises the Bradley-Terry likelihood (Bradley & Terry 1952) that the
chosen answer beats the rejected one:

    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))

A batch holds sequences of different lengths padded on the right; `lengths` says where each one ends,
so the padding value never matters (it is never read by the head, and causal attention keeps real
tokens from seeing the padding after them).

`save_reward_model` writes a trained one as a checkpoint of its body (loadable by `load_model`) plus
`reward_head.safetensors`; `load_reward_model` reads it back, and PPO/GRPO use it as their reward
(`reward = "model:DIR"`, reference_llm/posttrain/rl.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reference_llm.errors import CheckpointError
from reference_llm.model import Transformer
from reference_llm.tokenizer import Tokenizer
from reference_llm.train.checkpoint import load_model, load_weights, resolve_checkpoint, save_model
from reference_llm.train.checkpoint_checks import check_weights
from reference_llm.train.files import temp_name

HEAD_FILE = "reward_head.safetensors"


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


def save_reward_model(model: RewardModel, tokenizer: Tokenizer, run_dir: str | Path) -> Path:
    """The body as step 0 of `run_dir` (pretraining layout), the head beside it; returns the step directory."""
    path = save_model(model.backbone, tokenizer, run_dir, note=f"reward model: the body; its head is {HEAD_FILE}")
    tmp = path / temp_name(HEAD_FILE)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(tmp))
    os.replace(tmp, path / HEAD_FILE)  # a crash leaves no half-written head under the real name
    return path


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[RewardModel, Tokenizer]:
    """A reward model written by `save_reward_model` (run or step directory), in eval mode on `device`."""
    backbone, tokenizer, _ = load_model(path, device)
    head_file = resolve_checkpoint(path) / HEAD_FILE
    if not head_file.is_file():
        raise CheckpointError(
            f"{path} is not a reward model: {head_file} is missing (write one with "
            f"reference_llm.posttrain.reward.save_reward_model)"
        )
    try:
        tensors = load_file(str(head_file))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read {head_file}: {exc}") from None
    check_weights(tensors, head_file)
    model = RewardModel(backbone)
    load_weights(model.head, tensors)
    return model.to(device).eval(), tokenizer
