"""Reward model: the Bradley-Terry loss, the last-real-token head, and training on toy pairs."""

from __future__ import annotations

import math

import pytest
import torch

from reference_llm.model import ModelConfig, Transformer
from reference_llm.posttrain.data import PreferencePair
from reference_llm.posttrain.dpo import encode_pairs
from reference_llm.posttrain.reward import RewardModel, pairwise_loss
from reference_llm.tokenizer import train_tokenizer
from reference_llm.tokenizer.chat import add_chat_tokens


def test_pairwise_loss_matches_a_hand_computation():
    loss, accuracy = pairwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.5]))
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2  # -log sigmoid(d) = log(1 + e^-d)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == 0.5


def right_padded(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in sequences)
    idx = torch.tensor([s + [pad] * (T - len(s)) for s in sequences])
    return idx, torch.tensor([len(s) for s in sequences])


def test_reward_reads_the_last_real_token_and_ignores_padding():
    torch.manual_seed(0)
    model = RewardModel(Transformer(ModelConfig.preset("tiny")))
    torch.nn.init.normal_(model.head.weight)  # a zero head would score everything 0
    sequences = [[1, 2, 3, 4, 5], [6, 7]]
    a = model(*right_padded(sequences, pad=0))
    b = model(*right_padded(sequences, pad=99))
    torch.testing.assert_close(a, b)
    alone = model(torch.tensor([[6, 7]]), torch.tensor([2]))
    torch.testing.assert_close(a[1:], alone)


def test_training_separates_chosen_from_rejected():
    tok = add_chat_tokens(train_tokenizer("char", ["abc good bad"], None))
    prompts = ["ab", "ba", "abc", "cab", "bca", "cc", "aab", "bb", "ca", "acb"]
    pairs = [PreferencePair.make(p, "good", "bad", "toy") for p in prompts]
    encoded = encode_pairs(pairs, tok, 32)
    torch.manual_seed(0)
    model = RewardModel(Transformer(ModelConfig.preset("tiny", vocab_size=tok.vocab_size, block_size=32)))

    def batch(items):
        idx, lengths = right_padded([c for c, _, _ in items] + [r for _, r, _ in items], pad=0)
        rewards = model(idx, lengths)
        return pairwise_loss(rewards[: len(items)], rewards[len(items) :])

    train, held_out = encoded[:7], encoded[7:]
    loss0, acc0 = batch(held_out)
    assert loss0.item() == pytest.approx(math.log(2))  # zero-initialised head: every reward is 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(15):
        loss, _ = batch(train)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    loss1, acc1 = batch(held_out)
    assert acc0.item() == 0.0 and acc1.item() == 1.0
    assert loss1.item() < math.log(2) - 0.1
