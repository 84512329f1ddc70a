"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model", eq. 7).

Given a prompt x, a preferred answer y_w and a dispreferred one y_l, DPO trains the policy pi directly,
with no reward model and no sampling, against a frozen reference policy pi_ref (the SFT model):

    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )

beta * (log pi(y|x) - log pi_ref(y|x)) is the policy's implicit reward for y; we log its mean for the
chosen and rejected answers, their margin, and the preference accuracy (how often the chosen answer's
implicit reward is the higher). With pi == pi_ref every reward is 0 and the loss is log 2.

    python -m reference_llm.posttrain.dpo --checkpoint runs/demo-sft [--config configs/dpo.toml] [section.key=value ...]

The config is an SFT config (see reference_llm.posttrain.sft) with a [dpo] section instead of [sft]:

    [dpo]
    init = "runs/sft"      # the SFT checkpoint: the starting policy and the frozen reference
    data = "demo"          # "demo" (chitchat pairs, DEMO DATA) or a JSONL file of prompt/chosen/rejected
    beta = 0.1
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_llm.errors import ConfigError, DataError, TokenizerError
from reference_llm.model import IGNORE_INDEX
from reference_llm.posttrain.data import PreferencePair, demo_preference_pairs, load_preference_pairs
from reference_llm.posttrain.run import PostTrainRun, load_posttrain_config, posttrain_parser
from reference_llm.tokenizer.chat import END, chat_token_ids, encode_prompt

# Fewer, smaller steps than pretraining: DPO only nudges the SFT model (see reference_llm.posttrain.sft).
DPO_TRAIN_DEFAULTS = {"max_steps": 200, "lr": 1e-4, "min_lr": 1e-5, "warmup_steps": 10}


@dataclass
class DPOConfig:
    init: str = ""  # checkpoint of the starting policy (also the reference); "" = random init ([model])
    data: str = "demo"  # "demo" or a JSONL file of {"prompt", "chosen", "rejected"}
    max_examples: int = 0  # 0: every pair
    beta: float = 0.1  # strength of the KL constraint to the reference: smaller lets the policy move further


# ----------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------


@dataclass
class DPOOutput:
    loss: torch.Tensor  # scalar, differentiable
    chosen_rewards: torch.Tensor  # (B,) beta * log(pi / pi_ref) of the chosen answers, detached
    rejected_rewards: torch.Tensor  # (B,)

    @property
    def margin(self) -> float:
        return float((self.chosen_rewards - self.rejected_rewards).mean())

    @property
    def accuracy(self) -> float:
        return float((self.chosen_rewards > self.rejected_rewards).float().mean())


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> DPOOutput:
    """Eq. 7 of Rafailov et al. 2023 from summed answer log-probabilities, each (B,)."""
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()
    return DPOOutput(loss, beta * chosen_logratio.detach(), beta * rejected_logratio.detach())


def sequence_logprobs(model: nn.Module, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over each row of log p(labels[t] | idx[:t+1]), skipping IGNORE_INDEX labels: (B,)."""
    logits, _ = model(idx)
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return -nll.view(labels.shape).sum(dim=-1)


# ----------------------------------------------------------------------------------------------------
# Data: pairs -> padded batches
# ----------------------------------------------------------------------------------------------------


def encode_answer(prompt_ids: list[int], answer: str, tokenizer) -> list[int]:
    """prompt + answer + <|end|>: the full sequence whose answer part DPO and reward models score."""
    return prompt_ids + tokenizer.encode(answer) + [chat_token_ids(tokenizer)[END]]


def encode_pairs(pairs: Sequence[PreferencePair], tokenizer, max_len: int) -> list[tuple[list[int], list[int], int]]:
    """(chosen ids, rejected ids, prompt length) per pair. Pairs longer than `max_len` tokens, or with
    text the tokenizer cannot encode (a character tokenizer meeting unseen characters), are dropped;
    nothing left is an error naming `max_len`."""
    encoded = []
    for pair in pairs:
        try:
            prompt = encode_prompt(list(pair.prompt), tokenizer)
            chosen = encode_answer(prompt, pair.chosen, tokenizer)
            rejected = encode_answer(prompt, pair.rejected, tokenizer)
        except TokenizerError:
            continue
        if max(len(chosen), len(rejected)) <= max_len:
            encoded.append((chosen, rejected, len(prompt)))
    if not encoded:
        raise DataError(
            f"none of the {len(pairs)} preference pairs fits in {max_len} tokens (or encodes with "
            f"this tokenizer); raise train.seq_len (up to model.block_size) or use shorter pairs"
        )
    return encoded


def answer_batch(
    sequences: Sequence[list[int]], prompt_lengths: Sequence[int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs (B, T) and labels (B, T) that select only the answer tokens.

    Row i predicts sequences[i][1:]; labels are IGNORE_INDEX on the prompt and on padding.
    """
    T = max(len(s) for s in sequences) - 1
    idx = torch.zeros(len(sequences), T, dtype=torch.long)
    labels = torch.full((len(sequences), T), IGNORE_INDEX, dtype=torch.long)
    for row, (seq, prompt_len) in enumerate(zip(sequences, prompt_lengths)):
        idx[row, : len(seq) - 1] = torch.tensor(seq[:-1])
        labels[row, prompt_len - 1 : len(seq) - 1] = torch.tensor(seq[prompt_len:])
    return idx.to(device), labels.to(device)


def pair_batch(
    encoded: Sequence[tuple[list[int], list[int], int]], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen rows first, then rejected rows, in one batch (2B, T): one forward pass scores both."""
    sequences = [c for c, _, _ in encoded] + [r for _, r, _ in encoded]
    prompt_lengths = [p for _, _, p in encoded] * 2
    return answer_batch(sequences, prompt_lengths, device)


def dpo_step_loss(
    policy: nn.Module, reference: nn.Module, idx: torch.Tensor, labels: torch.Tensor, beta: float
) -> DPOOutput:
    """The loss of one (2B, T) `pair_batch`: chosen rows first, rejected rows second."""
    B = idx.size(0) // 2
    with torch.no_grad():
        ref = sequence_logprobs(reference, idx, labels)
    pol = sequence_logprobs(policy, idx, labels)
    return dpo_loss(pol[:B], pol[B:], ref[:B], ref[B:], beta)


def load_pairs(config: DPOConfig, seed: int) -> list[PreferencePair]:
    if config.data == "demo":
        pairs = demo_preference_pairs(limit=config.max_examples, seed=seed)
    else:
        pairs = load_preference_pairs(config.data)
        pairs = pairs[: config.max_examples] if config.max_examples > 0 else pairs
    if not pairs:
        raise DataError(f"dpo.data={config.data!r} gave no preference pairs")
    return pairs


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


class DPOObjective:
    """`objective(idx, labels) -> (DPOOutput, loss)` for a `pair_batch`: the model's calling convention,
    so that the shared training step drives it. Keeps each batch's statistics for the log."""

    def __init__(self, policy: nn.Module, reference: nn.Module, beta: float) -> None:
        self.policy, self.reference, self.beta = policy, reference, beta
        self._stats: list[dict[str, float]] = []

    def __call__(self, idx: torch.Tensor, labels: torch.Tensor) -> tuple[DPOOutput, torch.Tensor]:
        out = dpo_step_loss(self.policy, self.reference, idx, labels, self.beta)
        self._stats.append(
            {
                "reward_margin": out.margin,
                "accuracy": out.accuracy,
                "chosen_reward": float(out.chosen_rewards.mean()),
                "rejected_reward": float(out.rejected_rewards.mean()),
            }
        )
        return out, out.loss

    def take_stats(self) -> dict[str, float]:
        """Means of the statistics since the last call."""
        stats, self._stats = self._stats, []
        return {key: sum(s[key] for s in stats) / len(stats) for key in stats[0]} if stats else {}


def train_dpo(
    config_path: str | None, overrides: Sequence[str] = (), init: str | None = None, resume: bool = False
) -> dict:
    """Run DPO as configured (`init` overrides dpo.init); returns the final logged metrics."""
    config = load_posttrain_config(config_path, overrides, "dpo", DPOConfig, DPO_TRAIN_DEFAULTS, init)
    dpo, run = config.method, config.run
    if dpo.beta <= 0:
        raise ConfigError(f"dpo.beta must be positive, got {dpo.beta}")
    pairs = load_pairs(dpo, run.train.seed)

    def texts() -> list[str]:  # to train a tokenizer, for a random init only
        return [t for p in pairs for t in (*(m["content"] for m in p.prompt), p.chosen, p.rejected)]

    # The reference is the starting policy, frozen before any update (and before LoRA wraps it).
    job = PostTrainRun(config, texts, keep_reference=True, resume=resume)
    encoded = encode_pairs(pairs, job.tokenizer, run.seq_len + 1)
    assert job.reference is not None  # narrows the type: keep_reference=True keeps one
    objective = DPOObjective(job.model, job.reference, dpo.beta)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        chosen = job.rows.draw(len(encoded), run.train.micro_batch).tolist()
        return pair_batch([encoded[i] for i in chosen])

    source = "DEMO DATA (chitchat-dataset ratings + mismatched replies)" if dpo.data == "demo" else dpo.data
    job.note(
        f"DPO on {len(encoded)} preference pairs from {source}, beta={dpo.beta}; "
        f"the loss starts at log 2 = {math.log(2):.4f}"
    )
    return job.fit(objective, next_batch, stats=objective.take_stats, extra_state={"dpo": dataclasses.asdict(dpo)})


def main(argv: list[str]) -> int:
    args = posttrain_parser("dpo", "Direct Preference Optimization against a frozen reference model.").parse_args(argv)
    if args.config is None and args.checkpoint is None:
        raise ConfigError("give --checkpoint DIR (the SFT model to align), --config FILE, or both")
    last = train_dpo(args.config, args.overrides, args.checkpoint, resume=args.resume)
    print(
        "done: "
        + " | ".join(f"{k} {v:.4g}" for k, v in last.items() if k in ("step", "loss", "reward_margin", "accuracy"))
    )
    return 0


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
