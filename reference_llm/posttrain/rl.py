"""Reinforcement learning from a reward: what GRPO (grpo.py) and PPO (ppo.py) share.

One RL step is the `step_fn` of the shared training loop (`reference_llm.train.loop.fit`):

1. Rollout (`RLStep.next_batch`, once per micro-batch): `train.micro_batch` prompts, each answered
   `samples` times by the current policy with `generate` (KV cache), seeded from the run's row sampler
   so that a resumed run samples exactly the answers the uninterrupted one would have.
2. Scoring: the reward of each answer (a reward model or a toy function), and the per-token
   log-probabilities of the answer tokens under the policy that sampled them (pi_old) and under the
   frozen reference (pi_ref, the `init` model). The algorithm turns these into advantages.
3. `epochs` optimizer steps on that rollout with the clipped surrogate objective (Schulman et al.
   2017, "Proximal Policy Optimization Algorithms", eq. 7), rho_t = pi(a_t|s_t) / pi_old(a_t|s_t):

       L_clip = -E_t[ min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) ]

   PPO puts the KL to pi_ref into the reward and learns a value head; GRPO puts it into the loss and
   needs no value head (the group of answers to one prompt is the baseline).

A config is an SFT config (reference_llm.posttrain.sft) with a [grpo] or [ppo] section (`RLConfig`).
Rewards (`<section>.reward`):

    "model:DIR"               a reward model saved by reference_llm.posttrain.reward.save_reward_model
    "toy:target_token=TEXT"   the fraction of answer tokens equal to TEXT's single token
    "toy:length=N"            max(0, 1 - |answer tokens - N| / N): answers of N tokens (<|end|> counted)

Library callers may pass any `RewardFn` instead. Logged per step besides the loss: `reward` (mean over
the rollout), `kl` (mean over answers of sum_t log pi_old/pi_ref, an estimate of the sequence KL to the
reference), `answer_tokens`, `ended` (share of answers that closed with <|end|>), `clip_frac`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_llm.deploy.generate import generate
from reference_llm.distributed import Engine
from reference_llm.errors import CheckpointError, ConfigError, DataError, TokenizerError
from reference_llm.model import IGNORE_INDEX, Transformer
from reference_llm.posttrain.data import _jsonl, demo_preference_pairs
from reference_llm.posttrain.dpo import answer_batch
from reference_llm.posttrain.reward import load_reward_model
from reference_llm.posttrain.run import PostTrainRun, load_posttrain_config, posttrain_parser
from reference_llm.tokenizer.chat import END, Message, chat_token_ids, check_conversation, encode_prompt
from reference_llm.train import loop
from reference_llm.train.checkpoint import latest_checkpoint
from reference_llm.train.optim import CosineSchedule
from reference_llm.train.perf import autocast

# rewards(prompt ids, answer ids) -> (N,) float; an answer that ended holds its closing <|end|>
RewardFn = Callable[[Sequence[list[int]], Sequence[list[int]]], torch.Tensor]

# Short runs with small steps: RL only nudges the SFT model, and large steps collapse it.
RL_TRAIN_DEFAULTS = {"max_steps": 100, "lr": 5e-5, "min_lr": 5e-6, "warmup_steps": 5, "micro_batch": 8}


@dataclass
class RLConfig:
    """The keys [grpo] and [ppo] share; each algorithm's config subclasses this one."""

    init: str = ""  # checkpoint of the starting policy (also the frozen reference); "" = random init
    data: str = "demo"  # prompts: "demo" (chitchat prompts, DEMO DATA) or JSONL with a "prompt" per line
    max_examples: int = 0  # 0: every prompt
    reward: str = "toy:length=16"  # "model:DIR", "toy:target_token=TEXT" or "toy:length=N"
    samples: int = 4  # answers sampled per prompt (GRPO's group size G)
    max_new_tokens: int = 32
    temperature: float = 1.0  # sampling temperature; the log-probabilities use the same one
    epochs: int = 2  # optimizer steps on each rollout (GRPO's mu, PPO's epochs)
    clip: float = 0.2  # epsilon of the clipped surrogate
    beta: float = 0.04  # weight of the KL to the reference

    def check(self) -> None:
        section = type(self).__name__.removesuffix("Config").lower()
        for key, ok, rule in (
            ("samples", self.samples >= 1, ">= 1"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
            ("temperature", self.temperature > 0, "> 0"),
            ("clip", 0 < self.clip < 1, "in (0, 1)"),
            ("beta", self.beta >= 0, ">= 0"),
        ):
            if not ok:
                raise ConfigError(f"{section}.{key} must be {rule}, got {getattr(self, key)}")


# ----------------------------------------------------------------------------------------------------
# Prompts and rewards
# ----------------------------------------------------------------------------------------------------


def load_prompts(config: RLConfig, seed: int) -> list[list[Message]]:
    """The demo prompts (the user turns of the DPO demo pairs) or a JSONL file whose lines each hold a
    "prompt": a string or a conversation ending with a user turn (a preference-pair file works too)."""
    if config.data == "demo":
        prompts = [list(p.prompt) for p in demo_preference_pairs(limit=config.max_examples, seed=seed)]
    else:
        prompts = []
        for where, record in _jsonl(config.data):
            if not isinstance(record, dict) or "prompt" not in record:
                raise DataError(f"{where}: expected an object with a 'prompt'")
            value = record["prompt"]
            messages = [{"role": "user", "content": value}] if isinstance(value, str) else value
            messages = check_conversation(messages, where, require_assistant=False)
            if messages[-1]["role"] != "user":
                raise DataError(f"{where}: the prompt must end with a user message")
            prompts.append(messages)
        prompts = prompts[: config.max_examples] if config.max_examples > 0 else prompts
    if not prompts:
        raise DataError(f"data={config.data!r} gave no prompts")
    return prompts


def encode_prompts(prompts: Sequence[list[Message]], tokenizer, max_len: int) -> list[list[int]]:
    """Prompt ids that leave room for the answer (at most `max_len` tokens); prompts the tokenizer
    cannot encode (a character tokenizer meeting unseen characters) are dropped."""
    encoded = []
    for messages in prompts:
        try:
            ids = encode_prompt(messages, tokenizer)
        except TokenizerError:
            continue
        if len(ids) <= max_len:
            encoded.append(ids)
    if not encoded:
        raise DataError(
            f"none of the {len(prompts)} prompts fits in {max_len} tokens (train.seq_len minus "
            f"max_new_tokens) or encodes with this tokenizer; raise train.seq_len or shorten them"
        )
    return encoded


def _parse_reward(spec: str) -> tuple[str, str]:
    kind, _, value = spec.partition(":")
    if kind == "toy":
        kind, _, value = value.partition("=")
    if kind not in ("model", "target_token", "length") or not value:
        raise ConfigError(f"reward {spec!r}: expected 'model:DIR', 'toy:target_token=TEXT' or 'toy:length=N'")
    return kind, value


def reward_texts(spec: str) -> list[str]:
    """Text a tokenizer trained for this run must cover (a random init trains one on the prompts)."""
    kind, value = _parse_reward(spec)
    return [value] if kind == "target_token" else []


def build_reward(spec: str, tokenizer, device: torch.device, dtype: torch.dtype, max_len: int) -> RewardFn:
    """The `RewardFn` that `spec` names (see the module docstring); `max_len` is the longest prompt +
    answer the reward model will read."""
    kind, value = _parse_reward(spec)
    if kind == "target_token":
        target = tokenizer.encode(value)
        if len(target) != 1:
            raise ConfigError(f"reward {spec!r}: {value!r} is {len(target)} tokens for this tokenizer, not one")
        return lambda prompts, answers: torch.tensor([a.count(target[0]) / len(a) for a in answers])
    if kind == "length":
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"reward {spec!r}: the length must be a positive integer")
        n = int(value)
        return lambda prompts, answers: torch.tensor([max(0.0, 1 - abs(len(a) - n) / n) for a in answers])
    model, rm_tokenizer = load_reward_model(value, device)
    if rm_tokenizer.fingerprint() != tokenizer.fingerprint():
        raise CheckpointError(
            f"reward model {value} uses another tokenizer than the policy; train it from the "
            f"same checkpoint (its ids must mean what the policy's ids mean)"
        )
    if model.backbone.config.block_size < max_len:
        raise ConfigError(
            f"reward model {value} reads at most {model.backbone.config.block_size} tokens, but "
            f"prompt + answer can reach {max_len}; lower max_new_tokens or train.seq_len"
        )

    @torch.no_grad()
    def score(prompts: Sequence[list[int]], answers: Sequence[list[int]]) -> torch.Tensor:
        # Right-padded; the reward model reads each row at its last real token, so padding is never read.
        rows = [p + a for p, a in zip(prompts, answers)]
        idx = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, row in enumerate(rows):
            idx[i, : len(row)] = torch.tensor(row)
        with autocast(device, dtype):
            return model(idx.to(device), torch.tensor([len(r) for r in rows], device=device)).float().cpu()

    return score


# ----------------------------------------------------------------------------------------------------
# Rollouts and the shared loss pieces
# ----------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """Sampled answers of one micro-batch; the `samples` answers to a prompt are adjacent rows.
    Tensors are (N, T) over the input positions; only positions with `mask` (the answer tokens, the
    actions) count."""

    prompts: list[list[int]]  # one per row
    answers: list[list[int]]  # the sampled tokens, with <|end|> when the answer closed
    idx: torch.Tensor  # (N, T) prompt + answer, right-padded, without its last token
    labels: torch.Tensor  # (N, T) the answer token each position predicts; IGNORE_INDEX elsewhere
    rewards: torch.Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))  # (N,)
    old_logprobs: torch.Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))  # (N, T) log pi_old
    ref_logprobs: torch.Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))  # (N, T) log pi_ref
    advantages: torch.Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))  # (N, T)
    old_values: torch.Tensor | None = None  # (N, T) PPO's value estimates at rollout time
    returns: torch.Tensor | None = None  # (N, T) PPO's value targets

    @property
    def mask(self) -> torch.Tensor:
        return self.labels != IGNORE_INDEX


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float, vocab_size: int) -> torch.Tensor:
    """log pi(label_t | prefix) per position (N, T), 0 where the label is IGNORE_INDEX. Over the
    tokenizer's ids only and at the sampling temperature: the distribution `generate` sampled from."""
    logits = logits[..., :vocab_size].float() / temperature
    nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return -nll.view(labels.shape)


def clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss -min(rho A, clip(rho) A) (N, T), and where the clipped term was the smaller one."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


class Algorithm(ABC):
    """What differs between GRPO and PPO. `forward` gives logits (and PPO's values), `prepare` sets
    a scored rollout's advantages (no gradient), `loss` is the objective of one update; `step`, `save`
    and `load` look after state outside the engine (PPO's value head)."""

    def __init__(self, config: RLConfig, model: nn.Module, device: torch.device) -> None:
        self.config = config

    def forward(self, policy: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return policy(idx)[0], None

    @abstractmethod
    def prepare(self, batch: Rollout) -> None:
        """Set `batch.advantages` (and the algorithm's own targets) from its rewards and log-probabilities."""

    @abstractmethod
    def loss(
        self, batch: Rollout, logprobs: torch.Tensor, values: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One update's loss from the policy's current log-probabilities (N, T) (and values), with
        numbers for the log."""

    def step(self, lr: float, grad_clip: float) -> None:
        """After each optimizer step of the engine."""

    def save(self, path: Path) -> None:
        """Into a checkpoint's step directory, after the engine's state is written."""

    def load(self, path: Path) -> None:
        """From the step directory a resumed run continues."""


# ----------------------------------------------------------------------------------------------------
# The step: rollout, scoring, updates
# ----------------------------------------------------------------------------------------------------


class RLStep:
    """`next_batch` samples a rollout (fit counts its tokens); `__call__` is fit's `step_fn`: it scores
    the step's rollouts, then takes `epochs` optimizer steps on them."""

    def __init__(self, job: PostTrainRun, algorithm: Algorithm, prompts: list[list[int]], reward: RewardFn) -> None:
        self.job, self.algorithm, self.prompts, self.reward = job, algorithm, prompts, reward
        self.config: RLConfig = job.config.method
        self.end_id = chat_token_ids(job.tokenizer)[END]
        self.pending: list[Rollout] = []
        self._stats: list[dict[str, float]] = []

    def next_batch(self) -> loop.Batch:
        job, config = self.job, self.config
        rows = job.rows.draw(len(self.prompts), job.config.run.train.micro_batch).tolist()
        prompts = [self.prompts[i] for i in rows for _ in range(config.samples)]
        # The sampling seed comes from the row sampler, whose state every checkpoint stores.
        seed = int(torch.randint(2**31, (1,), generator=job.rows.generator))
        answers = generate(
            cast(Transformer, job.model),
            prompts,
            config.max_new_tokens,
            temperature=config.temperature,
            stop_ids=[self.end_id],
            seed=seed,
            vocab_size=job.tokenizer.vocab_size,
        )
        # A row shorter than max_new_tokens stopped at <|end|> (prompts leave room for every answer):
        # keep it, so that the policy learns when to stop.
        answers = [a + [self.end_id] if len(a) < config.max_new_tokens else a for a in answers]
        idx, labels = answer_batch([p + a for p, a in zip(prompts, answers)], [len(p) for p in prompts])
        self.pending.append(Rollout(prompts, answers, idx, labels))
        return idx, labels

    @torch.no_grad()
    def score(self, batch: Rollout, engine: Engine, dtype: torch.dtype) -> dict[str, float]:
        device, config, vocab = engine.device, self.config, self.job.tokenizer.vocab_size
        batch.idx, batch.labels = batch.idx.to(device), batch.labels.to(device)
        batch.rewards = self.reward(batch.prompts, batch.answers).float().to(device)
        reference = self.job.reference
        assert reference is not None  # narrows the type: RL runs keep a reference
        with autocast(device, dtype):
            logits, values = self.algorithm.forward(engine.model, batch.idx)
            batch.old_logprobs = token_logprobs(logits, batch.labels, config.temperature, vocab)
            batch.old_values = None if values is None else values.float()
            batch.ref_logprobs = token_logprobs(reference(batch.idx)[0], batch.labels, config.temperature, vocab)
        self.algorithm.prepare(batch)
        kl = ((batch.old_logprobs - batch.ref_logprobs) * batch.mask).sum(dim=1)  # (N,) sum over answer tokens
        return {
            "reward": float(batch.rewards.mean()),
            "kl": float(kl.mean()),
            "answer_tokens": float(batch.mask.sum(dim=1).float().mean()),
            "ended": sum(a[-1] == self.end_id for a in batch.answers) / len(batch.answers),
        }

    def __call__(
        self,
        engine: Engine,
        micro_batches: Sequence[loop.Batch],
        grad_accum: int,
        lr: float,
        grad_clip: float,
        dtype: torch.dtype,
        forward: loop.Forward | None = None,
    ) -> tuple[torch.Tensor, float]:
        batches, self.pending = self.pending, []
        assert len(batches) == len(micro_batches) == grad_accum  # one rollout per next_batch call
        scores = [self.score(batch, engine, dtype) for batch in batches]
        stats = {key: sum(s[key] for s in scores) / len(scores) for key in scores[0]}
        total = torch.zeros((), device=engine.device)
        update_stats: list[dict[str, float]] = []
        grad_norm = 0.0
        for _ in range(self.config.epochs):
            for i, batch in enumerate(batches):
                with engine.accumulating(is_last_micro_step=i == grad_accum - 1):
                    with autocast(engine.device, dtype):
                        logits, values = self.algorithm.forward(engine.model, batch.idx)
                        logprobs = token_logprobs(
                            logits, batch.labels, self.config.temperature, self.job.tokenizer.vocab_size
                        )
                        loss, extra = self.algorithm.loss(batch, logprobs, values)
                    engine.backward(loss / grad_accum)
                total += loss.detach()
                update_stats.append(extra)
            grad_norm = engine.step(lr, grad_clip)
            self.algorithm.step(lr, grad_clip)
        stats.update({key: sum(s[key] for s in update_stats) / len(update_stats) for key in update_stats[0]})
        self._stats.append(stats)
        return total / (grad_accum * self.config.epochs), grad_norm

    def take_stats(self) -> dict[str, float]:
        """Means of the statistics since the last call."""
        stats, self._stats = self._stats, []
        return {key: sum(s[key] for s in stats) / len(stats) for key in stats[0]} if stats else {}


# ----------------------------------------------------------------------------------------------------
# Training and the command line
# ----------------------------------------------------------------------------------------------------


def train_rl(
    section: str,
    config_class: type[RLConfig],
    make_algorithm: Callable[..., Algorithm],
    config_path: str | None,
    overrides: Sequence[str] = (),
    init: str | None = None,
    resume: bool = False,
    reward: RewardFn | None = None,
) -> dict[str, Any]:
    """Run GRPO or PPO as configured (`init` overrides `<section>.init`; `reward`, when given, replaces
    `<section>.reward`); returns the final logged metrics."""
    config = load_posttrain_config(config_path, overrides, section, config_class, RL_TRAIN_DEFAULTS, init)
    method, run = config.method, config.run
    method.check()
    prompts = load_prompts(method, run.train.seed)
    extra_texts = reward_texts(method.reward) if reward is None else []

    def texts() -> list[str]:  # to train a tokenizer, for a random init only
        return [m["content"] for p in prompts for m in p] + extra_texts

    # The reference is the starting policy, frozen before any update (and before LoRA wraps it).
    job = PostTrainRun(config, texts, keep_reference=True, resume=resume)
    if method.max_new_tokens >= run.seq_len:  # run.seq_len: now of the model the checkpoint gave
        raise ConfigError(
            f"{section}.max_new_tokens={method.max_new_tokens} leaves no room for a prompt in "
            f"train.seq_len={run.seq_len}"
        )
    encoded = encode_prompts(prompts, job.tokenizer, run.seq_len - method.max_new_tokens)
    max_len = max(map(len, encoded)) + method.max_new_tokens
    reward_fn = reward or build_reward(method.reward, job.tokenizer, job.device, job.dtype, max_len)
    algorithm = make_algorithm(method, job.model, job.device)
    if job.state.saved_step >= 0:  # resumed from a checkpoint: the algorithm's own state too
        algorithm.load(cast(Path, latest_checkpoint(job.run_dir)))
    step = RLStep(job, algorithm, encoded, reward_fn)

    def save(metrics: dict[str, Any]) -> Path:
        path = job.save(metrics, extra_state={section: dataclasses.asdict(method)})
        algorithm.save(path)
        return path

    source = "DEMO DATA (chitchat prompts)" if method.data == "demo" else method.data
    job.note(
        f"{section.upper()} on {len(encoded)} prompts from {source}, {method.samples} answers each, reward "
        f"{'(library function)' if reward else method.reward}, beta={method.beta}; {job.device.type} "
        f"{str(job.dtype).removeprefix('torch.')}"
    )
    return loop.fit(
        job.engine,
        CosineSchedule.from_config(run.train),
        step.next_batch,
        job.model,
        job.state,
        run,
        job.dtype,
        save,
        stats=step.take_stats,
        step_fn=step,
    )


def main(
    argv: list[str],
    section: str,
    config_class: type[RLConfig],
    make_algorithm: Callable[..., Algorithm],
    description: str,
) -> int:
    """`python -m reference_llm.posttrain.grpo` and `... .ppo`, the same command line as SFT and DPO."""
    args = posttrain_parser(section, description).parse_args(argv)
    if args.config is None and args.checkpoint is None:
        raise ConfigError("give --checkpoint DIR (the SFT model to train), --config FILE, or both")
    last = train_rl(
        section, config_class, make_algorithm, args.config, args.overrides, args.checkpoint, resume=args.resume
    )
    print("done: " + " | ".join(f"{k} {v:.4g}" for k, v in last.items() if k in ("step", "loss", "reward", "kl")))
    return 0
