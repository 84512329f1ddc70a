"""Perplexity and bits per byte: exact on a model with known output, consistent with the model's loss."""

from __future__ import annotations

import math

import pytest
import torch

from reference_llm.errors import ConfigError, DataError
from reference_llm.evaluate.perplexity import _windows, evaluate_text
from reference_llm.model import IGNORE_INDEX, ModelConfig, Transformer
from reference_llm.tokenizer import train_tokenizer

TEXT = "To be, or not to be: that is the question. Whether 'tis nobler in the mind to suffer — ça va.\n" * 3


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer("char", [TEXT], None)


def model_for(tokenizer, block_size: int = 32, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=block_size)).eval()


def test_uniform_model_has_perplexity_equal_to_the_vocabulary(tokenizer) -> None:
    model = model_for(tokenizer)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: the uniform distribution over V tokens
    result = evaluate_text(model, tokenizer, TEXT)
    V = tokenizer.vocab_size
    assert result.tokens == len(TEXT)  # <eot> first, so every character is predicted once
    assert result.perplexity == pytest.approx(V, rel=1e-5)
    # bpb = total nats / (UTF-8 bytes * ln 2); "—" and "ç" take several bytes, so bytes > characters
    n_bytes = len(TEXT.encode("utf-8"))
    assert result.bytes == n_bytes > len(TEXT)
    assert result.bits_per_byte == pytest.approx(len(TEXT) * math.log(V) / (n_bytes * math.log(2)), rel=1e-5)


def test_one_window_equals_the_models_own_loss(tokenizer) -> None:
    model = model_for(tokenizer, block_size=128)
    text = TEXT[:60]
    ids = [tokenizer.eot_id] + tokenizer.encode(text)
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    _, loss = model(x, y)
    result = evaluate_text(model, tokenizer, text)
    assert result.tokens == len(text)
    assert result.loss == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("stride", [32, 16, 7, 3])
def test_every_token_is_scored_exactly_once_whatever_the_stride(tokenizer, stride: int) -> None:
    model = model_for(tokenizer, block_size=32)
    result = evaluate_text(model, tokenizer, TEXT, stride=stride, batch_size=3)
    assert result.tokens == len(TEXT)
    ids = list(range(1, 101))
    scored = [t for _, targets in _windows(ids, 32, stride) for t in targets if t != IGNORE_INDEX]
    assert scored == ids[1:]  # each target once, in order


def test_non_overlapping_windows_match_a_hand_computed_sum(tokenizer) -> None:
    # stride = block_size: consecutive windows, each scored from its own start, as in training's val loss.
    model = model_for(tokenizer, block_size=16)
    ids = [tokenizer.eot_id] + tokenizer.encode(TEXT)
    total, count = 0.0, 0
    for begin in range(0, len(ids) - 1, 16):
        chunk = ids[begin : begin + 17]
        x, y = torch.tensor([chunk[:-1]]), torch.tensor([chunk[1:]])
        _, loss = model(x, y)
        total += loss.item() * (len(chunk) - 1)
        count += len(chunk) - 1
    result = evaluate_text(model, tokenizer, TEXT)
    assert result.tokens == count
    assert result.nats == pytest.approx(total, rel=1e-5)


def test_bad_arguments(tokenizer) -> None:
    model = model_for(tokenizer)
    with pytest.raises(ConfigError, match="stride"):
        evaluate_text(model, tokenizer, TEXT, stride=33)
    with pytest.raises(DataError, match="too short"):
        evaluate_text(model, tokenizer, "")
