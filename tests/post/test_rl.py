"""PPO and GRPO: the loss pieces against hand computations, toy rewards that rise while the KL to the
reference stays bounded (and grows without the penalty), a trained reward model as the reward, bit-exact
resume, and one-line errors."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from reference_llm.cli import run_main
from reference_llm.errors import CheckpointError, DataError
from reference_llm.model import ModelConfig, Transformer
from reference_llm.posttrain import grpo, ppo, rl
from reference_llm.posttrain.data import PreferencePair
from reference_llm.posttrain.dpo import encode_pairs
from reference_llm.posttrain.reward import RewardModel, load_reward_model, pairwise_loss, save_reward_model
from reference_llm.tokenizer import train_tokenizer
from reference_llm.tokenizer.chat import add_chat_tokens
from reference_llm.train import padded_vocab_size
from reference_llm.train.checkpoint import load_model, save_model
from reference_llm.train.metrics import read_metrics

PROMPTS = ["ab", "ba", "abc", "cab", "bca", "cc", "aab", "bb", "ca", "acb", "xyz", "zx"]
MAINS = {"grpo": grpo.main, "ppo": ppo.main}


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: one thread is as fast, and immune to a busy machine's oversubscription.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------
# The pieces
# ----------------------------------------------------------------------------------------------------


def test_group_advantages_standardise_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    got = grpo.group_advantages(rewards, group=4)
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)  # the unbiased std of (1, 0, 0, 0)
    torch.testing.assert_close(got[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (std + 1e-4))
    assert got[4:].tolist() == [0.0] * 4  # equal rewards teach nothing


def test_kl_estimate_is_zero_at_the_reference_and_positive_elsewhere():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    assert grpo.kl_estimate(logp, logp).tolist() == [0.0, 0.0, 0.0]
    ref = torch.tensor([-1.5, -1.0, -0.5])
    expected = [math.exp(r - p) - (r - p) - 1 for p, r in zip(logp.tolist(), ref.tolist())]
    torch.testing.assert_close(grpo.kl_estimate(logp, ref), torch.tensor(expected))
    assert (grpo.kl_estimate(logp, ref)[:2] > 0).all()


def test_clipped_surrogate_matches_a_hand_computation():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))  # ratios 1.5, 1.5, 0.5, 0.5
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = rl.clipped_surrogate(logp, old, adv, clip=0.2)
    # -min(r A, clip(r) A): A > 0 caps a rising ratio at 1.2; A < 0 caps a falling one at 0.8.
    torch.testing.assert_close(loss, torch.tensor([-1.2, 1.5, -0.5, 0.8]))
    assert clipped.tolist() == [True, False, False, True]


def test_gae_matches_a_hand_computation():
    mask = torch.tensor([[False, True, True, True, False]])  # prompt, three answer tokens, padding
    rewards = torch.tensor([[0.0, 0.1, -0.2, 1.0, 0.0]])
    values = torch.tensor([[0.0, 0.5, 0.4, 0.3, 0.0]])
    gamma, lam = 0.9, 0.8
    d3 = 1.0 - 0.3  # the value after the last token is 0
    d2 = -0.2 + gamma * 0.3 - 0.4
    d1 = 0.1 + gamma * 0.4 - 0.5
    a3, a2 = d3, d2 + gamma * lam * d3
    a1 = d1 + gamma * lam * a2
    advantages, returns = ppo.gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, a1, a2, a3, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.0, a1 + 0.5, a2 + 0.4, a3 + 0.3, 0.0]]))


def test_toy_rewards(tmp_path):
    tok = add_chat_tokens(train_tokenizer("char", ["abc"], None))
    a, b = tok.encode("a")[0], tok.encode("b")[0]
    target = rl.build_reward("toy:target_token=a", tok, torch.device("cpu"), torch.float32, 32)
    assert target([[1], [1]], [[a, b, a, b], [b]]).tolist() == [0.5, 0.0]
    length = rl.build_reward("toy:length=4", tok, torch.device("cpu"), torch.float32, 32)
    assert length([[1]] * 3, [[a] * 4, [a] * 2, [a] * 9]).tolist() == [1.0, 0.5, 0.0]


# ----------------------------------------------------------------------------------------------------
# Training on a toy task
# ----------------------------------------------------------------------------------------------------

CONFIG = """
[{section}]
data = "{data}"
reward = "{reward}"
samples = {samples}
max_new_tokens = 8
[model]
preset = "tiny"
block_size = 32
[data]
tokenizer = "char"
[train]
max_steps = {steps}
micro_batch = {micro_batch}
lr = 3e-3
warmup_steps = 0
log_interval = 4
dtype = "float32"
device = "cpu"
[checkpoint]
dir = "{run}"
interval = 0
{extra}
"""


def write_config(
    tmp_path, section: str, name: str = "run", steps: int = 20, reward: str = "toy:target_token=a", extra: str = ""
) -> str:
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    # Sixteen answers per step either way: GRPO in groups of 4, PPO one per prompt.
    samples, micro_batch = (4, 4) if section == "grpo" else (1, 16)
    path = tmp_path / f"{name}.toml"
    path.write_text(
        CONFIG.format(
            section=section,
            data=data,
            reward=reward,
            samples=samples,
            steps=steps,
            micro_batch=micro_batch,
            run=tmp_path / name,
            extra=extra,
        )
    )
    return str(path)


def logged(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def test_grpo_raises_the_toy_reward_with_the_kl_bounded_by_beta(tmp_path):
    """A random-init policy rewarded for the token "a" (1 in ~20 tokens at the start) says "a" for most
    of its answer within 20 steps (0.12 -> 0.70 here). beta = 0.2 holds the KL to the reference (8.5 at
    most here) well below what the same run reaches without the penalty (14, the negative control)."""
    config = write_config(tmp_path, "grpo")
    assert run_main(grpo.main, ["--config", config, "grpo.beta=0.2"]) == 0
    records = logged(tmp_path / "run")
    assert [r["step"] for r in records] == [4, 8, 12, 16, 20]
    rewards, kls = [r["reward"] for r in records], [r["kl"] for r in records]
    assert rewards[0] < 0.2 and rewards[-1] > rewards[0] + 0.4, rewards
    assert max(kls) < 10, kls
    assert all({"answer_tokens", "ended", "clip_frac", "grad_norm"} <= set(r) for r in records)

    assert run_main(grpo.main, ["--config", config, "grpo.beta=0", "checkpoint.dir=" + str(tmp_path / "free")]) == 0
    free = [r["kl"] for r in logged(tmp_path / "free")]
    assert free[-1] > 1.3 * kls[-1], (free, kls)  # without the penalty the policy drifts further
    model, tok, _ = load_model(tmp_path / "run")  # the output is a plain, loadable policy
    assert tok.special_tokens.keys() >= {"<|user|>", "<|assistant|>", "<|end|>"}


def test_ppo_raises_the_toy_reward_with_a_value_head(tmp_path):
    """The same task with PPO at its default beta = 0.02 (InstructGPT's): 0.16 -> 0.93 in 20 steps here,
    the KL levelling off at 15."""
    config = write_config(tmp_path, "ppo")
    assert run_main(ppo.main, ["--config", config]) == 0
    records = logged(tmp_path / "run")
    rewards, kls = [r["reward"] for r in records], [r["kl"] for r in records]
    assert rewards[0] < 0.25 and rewards[-1] > rewards[0] + 0.5, rewards
    assert max(kls) < 20, kls
    assert all("value_loss" in r for r in records)
    assert (tmp_path / "run" / "step_0000020" / ppo.VALUE_HEAD_FILE).is_file()
    load_model(tmp_path / "run")  # the value head stays out of the policy's checkpoint


# ----------------------------------------------------------------------------------------------------
# A trained reward model as the reward
# ----------------------------------------------------------------------------------------------------


def scores(model: RewardModel, sequences: list[list[int]]) -> torch.Tensor:
    T = max(map(len, sequences))
    return model(torch.tensor([s + [0] * (T - len(s)) for s in sequences]), torch.tensor([len(s) for s in sequences]))


def train_reward_model(tmp_path):
    """A base checkpoint, and a reward model trained from it to prefer answers that contain "a"."""
    tok = add_chat_tokens(train_tokenizer("char", ["abcxyz"], None))
    torch.manual_seed(0)
    base = Transformer(ModelConfig.preset("tiny", vocab_size=padded_vocab_size(tok.vocab_size), block_size=32))
    save_model(base, tok, tmp_path / "base")
    rng = random.Random(0)

    def text(chars: str) -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(2, 7)))

    pairs = [PreferencePair.make(rng.choice(PROMPTS), "a" + text("aaabcxyz"), text("bcxyz"), "toy") for _ in range(64)]
    encoded = encode_pairs(pairs, tok, 32)
    model = RewardModel(Transformer(base.config))
    model.backbone.load_state_dict(base.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        batch = [encoded[i] for i in torch.randint(len(encoded), (16,)).tolist()]
        r = scores(model, [c for c, _, _ in batch] + [r for _, r, _ in batch])
        loss, accuracy = pairwise_loss(r[:16], r[16:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert accuracy.item() > 0.9
    save_reward_model(model, tok, tmp_path / "rm")
    loaded, loaded_tok = load_reward_model(tmp_path / "rm")
    chosen = [c for c, _, _ in encoded]
    with torch.no_grad():
        torch.testing.assert_close(scores(loaded, chosen), scores(model, chosen))
    assert loaded_tok.fingerprint() == tok.fingerprint()


def test_grpo_with_a_trained_reward_model(tmp_path):
    """From a checkpoint (as after SFT) with a reward model trained from it: the command runs end to
    end and the reward model's score of the sampled answers rises."""
    train_reward_model(tmp_path)
    config = write_config(tmp_path, "grpo", reward=f"model:{tmp_path / 'rm'}")
    # The checkpoint fixes the model: drop the config's [model] section.
    text = open(config).read().replace('[model]\npreset = "tiny"\nblock_size = 32\n', "")
    open(config, "w").write(text)
    assert run_main(grpo.main, ["--checkpoint", str(tmp_path / "base"), "--config", config, "grpo.beta=0.1"]) == 0
    rewards = [r["reward"] for r in logged(tmp_path / "run")]
    assert rewards[-1] > rewards[0] + 1.0, rewards


def test_a_reward_model_without_its_head_or_with_another_tokenizer_is_refused(tmp_path, capsys):
    tok = add_chat_tokens(train_tokenizer("char", ["abcxyz"], None))
    body = Transformer(ModelConfig.preset("tiny", vocab_size=64, block_size=32))
    save_model(body, tok, tmp_path / "plain")
    with pytest.raises(CheckpointError, match="not a reward model"):
        load_reward_model(tmp_path / "plain")
    other = add_chat_tokens(train_tokenizer("char", ["abcxyzq"], None))
    save_reward_model(RewardModel(body), other, tmp_path / "rm")
    config = write_config(tmp_path, "grpo", reward=f"model:{tmp_path / 'rm'}", steps=1)
    assert run_main(grpo.main, ["--config", config]) == 2
    assert "uses another tokenizer than the policy" in capsys.readouterr().err
    # The answer's room is checked against the checkpoint's block size, not the config's default model.
    args = ["--checkpoint", str(tmp_path / "plain"), f"grpo.data={tmp_path / 'prompts.jsonl'}"]
    assert run_main(grpo.main, args) == 2
    assert "grpo.max_new_tokens=32 leaves no room for a prompt in train.seq_len=32" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Resume and bad input
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("section, extra", [("grpo", ""), ("ppo", ""), ("grpo", "[lora]\nr = 2")])
def test_resumed_run_continues_the_uninterrupted_one(tmp_path, monkeypatch, section, extra):
    """Stopped after its step-2 checkpoint and resumed, the run logs what the uninterrupted one logs:
    the same prompts and sampled answers (the sampler's state), weights (with LoRA: adapters), optimizer
    state and, for PPO, the value head and its optimizer."""
    args = ["train.log_interval=1", "checkpoint.interval=2"]
    whole = write_config(tmp_path, section, "whole", steps=4, extra=extra)
    assert run_main(MAINS[section], ["--config", whole, *args]) == 0
    staged = write_config(tmp_path, section, "staged", steps=4, extra=extra)
    original = rl.RLStep.__call__

    def crash_at_step_three(self, *a, **kw):
        if self.job.state.step == 2:
            raise RuntimeError("interrupted")
        return original(self, *a, **kw)

    monkeypatch.setattr(rl.RLStep, "__call__", crash_at_step_three)
    with pytest.raises(RuntimeError, match="interrupted"):
        MAINS[section](["--config", staged, *args])
    monkeypatch.setattr(rl.RLStep, "__call__", original)
    assert run_main(MAINS[section], ["--config", staged, *args, "--resume"]) == 0

    def history(name: str) -> list[tuple]:
        return [(r["step"], r["loss"], r["reward"], r["kl"]) for r in logged(tmp_path / name)]

    assert [step for step, *_ in history("whole")] == [1, 2, 3, 4]
    assert history("staged") == history("whole")


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.reward=toy:colour=red", "expected 'model:DIR', 'toy:target_token=TEXT' or 'toy:length=N'"),
        ("grpo.reward=toy:target_token=ab", "'ab' is 2 tokens for this tokenizer, not one"),
        ("grpo.reward=toy:length=-3", "the length must be a positive integer"),
        ("grpo.samples=1", "grpo.samples must be >= 2"),
        ("grpo.clip=1.5", "grpo.clip must be in (0, 1)"),
        ("grpo.max_new_tokens=32", "grpo.max_new_tokens=32 leaves no room for a prompt in train.seq_len=32"),
        ("grpo.reward=model:/nonexistent", "checkpoint not found: /nonexistent"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(tmp_path, capsys, override, message):
    config = write_config(tmp_path, "grpo", steps=1)
    assert run_main(grpo.main, ["--config", config, override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_bad_prompt_files_name_the_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"question": "hi"}) + "\n")
    with pytest.raises(DataError, match="line 2: expected an object with a 'prompt'"):
        rl.load_prompts(rl.RLConfig(data=str(path)), seed=0)
    path.write_text(
        json.dumps({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n"
    )
    with pytest.raises(DataError, match="line 1: the prompt must end with a user message"):
        rl.load_prompts(rl.RLConfig(data=str(path)), seed=0)
