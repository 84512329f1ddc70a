"""Multiple choice by log-likelihood: exact scores, length normalisation, item files, the built-in set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reference_llm.assets import corpus_path
from reference_llm.errors import ConfigError, DataError
from reference_llm.evaluate.multiple_choice import (
    BUILTIN_ITEMS,
    MCItem,
    choice_logprobs,
    evaluate_multiple_choice,
    load_items,
)
from reference_llm.model import ModelConfig, Transformer
from reference_llm.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer("char", [corpus_path().read_text(encoding="utf-8")[:200_000]], None)


def unigram_model(tokenizer, favourite: str, strength: float = 10.0) -> Transformer:
    """A GPT-2-style model whose every prediction is the same: `favourite` with logit `strength`, the
    rest 0. The final LayerNorm outputs only its bias b, and the head row of `favourite` is b·strength/|b|²."""
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny-gpt2", vocab_size=tokenizer.vocab_size, block_size=64)
    model = Transformer(config).eval()
    with torch.no_grad():
        bias = torch.randn(config.d_model)
        model.norm_f.weight.zero_()
        model.norm_f.bias.copy_(bias)
        model.lm_head.weight.zero_()  # tied to the embeddings; their values do not matter here
        model.lm_head.weight[tokenizer.encode(favourite)[0]] = bias * strength / bias.dot(bias)
    return model


def test_choice_logprobs_match_a_direct_computation(tokenizer) -> None:
    torch.manual_seed(1)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64)).eval()
    context, choices = "ROMEO:\nI pray", [" you", " thee now"]
    scores = choice_logprobs(model, tokenizer, context, choices)
    for choice, (logprob, n_tokens) in zip(choices, scores):
        ids = [tokenizer.eot_id] + tokenizer.encode(context) + tokenizer.encode(choice)
        logp = F.log_softmax(model(torch.tensor([ids]))[0][0], dim=-1)
        n = len(tokenizer.encode(choice))
        expected = sum(logp[len(ids) - n - 1 + i, ids[len(ids) - n + i]].item() for i in range(n))
        assert n_tokens == n and logprob == pytest.approx(expected, abs=1e-4)


def test_length_normalisation_changes_the_winner(tokenizer) -> None:
    model = unigram_model(tokenizer, "e")
    # " x" costs one unlikely token; " xeeeee" the same unlikely token plus five near-certain ones.
    item = MCItem(context="The", choices=(" x", " xeeeee"), answer=1)
    assert evaluate_multiple_choice(model, tokenizer, [item], "none").predictions == [0]  # a sum favours short
    assert evaluate_multiple_choice(model, tokenizer, [item], "tokens").predictions == [1]
    assert evaluate_multiple_choice(model, tokenizer, [item], "chars").predictions == [1]


def test_accuracy_counts_right_answers(tokenizer) -> None:
    model = unigram_model(tokenizer, "e")
    items = [MCItem("a", (" e", " q"), 0), MCItem("b", (" q", " e"), 1), MCItem("c", (" e", " q"), 1)]
    report = evaluate_multiple_choice(model, tokenizer, items)
    assert report.predictions == [0, 1, 0]
    assert (report.correct, report.total) == (2, 3) and report.accuracy == pytest.approx(2 / 3)


def test_builtin_items_are_well_formed_and_usable_by_a_corpus_char_model(tokenizer) -> None:
    assert len(BUILTIN_ITEMS) >= 10
    for item in BUILTIN_ITEMS:
        assert len(item.choices) == 4 and len(set(item.choices)) == 4 and 0 <= item.answer < 4
        tokenizer.encode(item.context + "".join(item.choices))  # every character exists in the corpus
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64)).eval()
    report = evaluate_multiple_choice(model, tokenizer, BUILTIN_ITEMS, "chars")
    assert report.total == len(BUILTIN_ITEMS) and len(report.predictions) == len(BUILTIN_ITEMS)
    assert 0.0 <= report.accuracy <= 1.0


def test_items_load_from_jsonl_and_bad_lines_are_named(tmp_path: Path) -> None:
    good = tmp_path / "items.jsonl"
    good.write_text(json.dumps({"context": "Good", "choices": [" morrow", " spoon"], "answer": 0}) + "\n\n")
    assert load_items(good) == [MCItem("Good", (" morrow", " spoon"), 0)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "x", "choices": [" a", " b"], "answer": 0}) + "\n" + '{"context": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        load_items(bad)
    with pytest.raises(DataError, match="out of range"):
        MCItem("x", (" a", " b"), 2)


def test_unknown_normalisation_is_refused(tokenizer) -> None:
    with pytest.raises(ConfigError, match="normalize must be one of none, tokens, chars"):
        evaluate_multiple_choice(unigram_model(tokenizer, "e"), tokenizer, BUILTIN_ITEMS[:1], "bytes")
