"""DPO: the loss against a hand computation, log 2 at the start, batches, training, the CLI, bad input."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from reference_llm.cli import run_main
from reference_llm.errors import DataError
from reference_llm.model import IGNORE_INDEX, ModelConfig, Transformer
from reference_llm.posttrain.data import PreferencePair, demo_preference_pairs, load_preference_pairs
from reference_llm.posttrain.dpo import (
    dpo_loss,
    dpo_step_loss,
    encode_pairs,
    main,
    pair_batch,
    sequence_logprobs,
    train_dpo,
)
from reference_llm.tokenizer import train_tokenizer
from reference_llm.tokenizer.chat import add_chat_tokens, encode_prompt
from reference_llm.train import loop as posttrain_run
from reference_llm.train import train_step
from reference_llm.train.checkpoint import load_model
from reference_llm.train.metrics import read_metrics

PROMPTS = ["ab", "ba", "abc", "cab", "bca", "cc", "aab", "bb", "ca", "acb"]


def toy_pairs(prompts: list[str]) -> list[PreferencePair]:
    return [PreferencePair.make(p, "yes", "no", "toy") for p in prompts]


@pytest.fixture(scope="module")
def tokenizer():
    return add_chat_tokens(train_tokenizer("char", ["abc yesno"], None))


@pytest.fixture()
def model(tokenizer):
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=32))


def test_loss_matches_a_hand_computation():
    beta = 0.5
    out = dpo_loss(
        torch.tensor([-1.0, -4.0]),
        torch.tensor([-3.0, -2.0]),
        torch.tensor([-2.0, -4.0]),
        torch.tensor([-2.5, -2.5]),
        beta,
    )
    # pair 1: chosen log-ratio 1, rejected -0.5 -> beta * 1.5 = 0.75; pair 2: 0 and 0.5 -> -0.25
    expected = (math.log1p(math.exp(-0.75)) + math.log1p(math.exp(0.25))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.chosen_rewards.tolist() == [0.5, 0.0] and out.rejected_rewards.tolist() == [-0.25, 0.25]
    assert out.margin == pytest.approx((0.75 - 0.25) / 2)
    assert out.accuracy == 0.5


def test_pair_batch_selects_exactly_the_answer_tokens(tokenizer):
    ((chosen, rejected, prompt_len),) = encode_pairs(toy_pairs(["ab"]), tokenizer, 32)
    assert prompt_len == len(encode_prompt([{"role": "user", "content": "ab"}], tokenizer))
    idx, labels = pair_batch([(chosen, rejected, prompt_len)])
    assert idx.shape == labels.shape == (2, len(chosen) - 1)  # "yes" is longer than "no"
    assert labels[0].tolist() == [IGNORE_INDEX] * (prompt_len - 1) + chosen[prompt_len:]
    assert labels[1].tolist() == (
        [IGNORE_INDEX] * (prompt_len - 1) + rejected[prompt_len:] + [IGNORE_INDEX] * (len(chosen) - len(rejected))
    )


def test_sequence_logprobs_sums_the_answer_tokens(model, tokenizer):
    idx, labels = pair_batch(encode_pairs(toy_pairs(PROMPTS[:3]), tokenizer, 32))
    with torch.no_grad():
        got = sequence_logprobs(model, idx, labels)
        logp = F.log_softmax(model(idx)[0].float(), dim=-1)
    for row in range(idx.size(0)):
        expected = sum(logp[row, t, labels[row, t]] for t in range(idx.size(1)) if labels[row, t] != IGNORE_INDEX)
        assert got[row].item() == pytest.approx(float(expected), abs=1e-4)


def test_policy_equal_to_reference_gives_log2_and_zero_margin(model, tokenizer):
    idx, labels = pair_batch(encode_pairs(toy_pairs(PROMPTS), tokenizer, 32))
    out = dpo_step_loss(model, model, idx, labels, beta=0.1)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.margin == 0.0 and out.accuracy == 0.0


def test_training_raises_preference_accuracy(model, tokenizer):
    reference = copy.deepcopy(model).requires_grad_(False)
    train_idx, train_labels = pair_batch(encode_pairs(toy_pairs(PROMPTS[:7]), tokenizer, 32))
    test_idx, test_labels = pair_batch(encode_pairs(toy_pairs(PROMPTS[7:]), tokenizer, 32))
    before = dpo_step_loss(model, reference, test_idx, test_labels, beta=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(15):
        loss = dpo_step_loss(model, reference, train_idx, train_labels, beta=0.1).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dpo_step_loss(model, reference, test_idx, test_labels, beta=0.1)
    assert before.accuracy == 0.0 and after.accuracy == 1.0  # on prompts it never trained on
    assert after.margin > 0.1 and after.loss.item() < math.log(2) - 0.05


def test_identical_answers_and_empty_files_are_refused(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "hello "}) + "\n")
    with pytest.raises(DataError, match="line 1.*identical"):
        load_preference_pairs(path)
    path.write_text("\n")
    with pytest.raises(DataError, match="no preference pairs"):
        load_preference_pairs(path)


def test_demo_pairs_are_distinct_and_well_formed():
    pairs = demo_preference_pairs(limit=50, seed=1)
    assert len(pairs) == 50
    for pair in pairs:
        assert pair.chosen.strip() != pair.rejected.strip()
        assert pair.prompt[-1]["role"] == "user" and pair.prompt[-1]["content"]


DPO_CONFIG = """
[dpo]
data = "{data}"
beta = 0.5
[model]
preset = "tiny"
block_size = 32
[data]
tokenizer = "char"
[train]
max_steps = 4
micro_batch = 4
lr = 3e-3
warmup_steps = 0
log_interval = 2
dtype = "float32"
[checkpoint]
dir = "{run}"
interval = 0
{extra}
"""


@pytest.mark.parametrize("extra", ["", '[lora]\nr = 2\ntargets = ["attn.qkv"]'])
def test_cli_trains_logs_and_writes_a_loadable_checkpoint(tmp_path, extra):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": "yes", "rejected": "no"}) + "\n" for p in PROMPTS))
    config = tmp_path / "dpo.toml"
    config.write_text(DPO_CONFIG.format(data=data, run=tmp_path / "run", extra=extra))
    assert run_main(main, ["--config", str(config)]) == 0
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [2, 4]
    assert all({"reward_margin", "accuracy", "chosen_reward", "rejected_reward"} <= set(r) for r in records)
    model, tok, _ = load_model(tmp_path / "run")
    assert (tmp_path / "run" / "step_0000004" / "adapter.safetensors").exists() == bool(extra)
    assert tok.special_tokens.keys() >= {"<|user|>", "<|assistant|>", "<|end|>"}


def test_cli_bad_beta_is_exit_2(tmp_path, capsys):
    config = tmp_path / "dpo.toml"
    config.write_text(DPO_CONFIG.format(data="demo", run=tmp_path / "run", extra=""))
    assert run_main(main, ["--config", str(config), "dpo.beta=0"]) == 2
    assert capsys.readouterr().err.strip() == "error: dpo.beta must be positive, got 0.0"


def test_resumed_run_continues_the_uninterrupted_one(tmp_path, monkeypatch):
    """Stopped after its step-2 checkpoint and resumed, DPO logs what the uninterrupted run logs: the
    reference stays the starting policy (not the resumed weights) and the pair sampler picks up."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": "yes", "rejected": "no"}) + "\n" for p in PROMPTS))
    args = ["train.log_interval=1", "checkpoint.interval=2"]

    def config(name: str):
        path = tmp_path / f"{name}.toml"
        path.write_text(DPO_CONFIG.format(data=data, run=tmp_path / name, extra=""))
        return str(path)

    assert run_main(main, ["--config", config("whole"), *args]) == 0

    def crash_at_step_three(*a, **kw):
        if crash_at_step_three.calls == 2:
            raise RuntimeError("interrupted")
        crash_at_step_three.calls += 1
        return train_step(*a, **kw)

    crash_at_step_three.calls = 0
    monkeypatch.setattr(posttrain_run, "train_step", crash_at_step_three)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_dpo(config("staged"), args)
    monkeypatch.setattr(posttrain_run, "train_step", train_step)
    assert run_main(main, ["--config", config("staged"), *args, "--resume"]) == 0

    def logged(name: str) -> list[tuple[int, float, float]]:
        return [
            (r["step"], r["loss"], r["reward_margin"])
            for r in read_metrics(tmp_path / name / "metrics.jsonl")
            if "loss" in r
        ]

    assert [step for step, _, _ in logged("whole")] == [1, 2, 3, 4]
    assert logged("staged")[2:] == logged("whole")[2:]
