"""Multiple choice by log-likelihood: the model "answers" with the choice it finds most probable.

For each item the score of a choice is log p(choice | context), summed over the choice's tokens
(the zero-shot method of Brown et al. 2020, section 2.4). Longer choices collect more negative terms,
so `normalize` can divide the sum by the choice's length in tokens or in characters (the
character-normalised accuracy that lm-evaluation-harness reports as acc_norm).

    report = evaluate_multiple_choice(model, tokenizer, BUILTIN_ITEMS, normalize="chars")
    report.accuracy

`BUILTIN_ITEMS` is a dozen items written for this project: lines and turns of phrase from the bundled
Shakespeare corpus with one fitting continuation and three that do not. It is a smoke test that a model
trained on that corpus has learned something (random choice scores 0.25), not a benchmark. Other item
sets load from JSON lines with `load_items`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from reference_llm.errors import ConfigError, DataError
from reference_llm.model import Transformer

NORMALIZATIONS = ("none", "tokens", "chars")


@dataclass(frozen=True)
class MCItem:
    context: str
    choices: tuple[str, ...]  # continuations of the context, usually starting with a space
    answer: int  # index of the right choice

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise DataError(
                f"a multiple-choice item needs at least 2 choices, got {len(self.choices)}: {self.context!r}"
            )
        if not 0 <= self.answer < len(self.choices):
            raise DataError(
                f"answer index {self.answer} is out of range for {len(self.choices)} choices: {self.context!r}"
            )
        if any(not choice for choice in self.choices):
            raise DataError(f"an empty choice in item {self.context!r}")


@dataclass
class MCReport:
    accuracy: float
    correct: int
    total: int
    predictions: list[int]  # chosen index per item


def _item(context: str, answer: str, *wrong: str) -> MCItem:
    return MCItem(context=context, choices=(answer, *wrong), answer=0)


BUILTIN_ITEMS: tuple[MCItem, ...] = (
    _item("All the world's a", " stage", " spoon", " seven", " running"),
    _item("If music be the food of love, play", " on", " seventeen", " carrots", " beneath"),
    _item("The course of true love never did run", " smooth", " purple", " upstairs", " eleven"),
    _item("Lord, what fools these mortals", " be", " spoon", " ninety", " under"),
    _item("Now, fair Hippolyta, our nuptial", " hour", " spoon", " swim", " beneath"),
    _item("Good morrow, my good", " lord", " table", " running", " seven"),
    _item("I pray", " you", " spoon", " nineteen", " green"),
    _item("I will attend you, my", " liege", " spoon", " nine", " upstairs"),
    _item("HAMLET:\nThou art a", " villain", " upstairs", " and", " twelve"),
    _item("Farewell, sweet", " lady", " seventeen", " ran", " upstairs"),
    _item("Come, let us", " go", " spoon", " ninety", " table"),
    _item("What is your", " name", " ran", " upon", " eleven"),
)


def load_items(path: str | Path) -> list[MCItem]:
    """Items from JSON lines: {"context": str, "choices": [str, ...], "answer": int} per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"multiple-choice file not found: {path}")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            items.append(
                MCItem(context=str(row["context"]), choices=tuple(map(str, row["choices"])), answer=int(row["answer"]))
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f'{path}:{number}: expected {{"context": str, "choices": [str, ...], "answer": int}} ({exc!r})'
            ) from None
    if not items:
        raise DataError(f"{path} holds no items")
    return items


@torch.no_grad()
def choice_logprobs(model: Transformer, tokenizer, context: str, choices: Sequence[str]) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each choice as the continuation of `context`.

    Context and choice are tokenized separately, so every choice is scored on the same context tokens
    even where a BPE merge would have joined the two across the boundary. A context longer than the
    model's window keeps its last tokens.
    """
    ctx = tokenizer.encode(context)
    if tokenizer.eot_id is not None:
        ctx = [tokenizer.eot_id] + ctx  # a document boundary first, as in training; gives "" a context
    if not ctx:
        raise DataError("an empty context needs a tokenizer with an end-of-text token to condition on")
    conts = [tokenizer.encode(choice) for choice in choices]
    block_size = model.config.block_size
    rows = []
    for choice, cont in zip(choices, conts):
        if not cont or len(cont) >= block_size:
            raise DataError(
                f"choice {choice!r} is {len(cont)} tokens; it must be between 1 and "
                f"{block_size - 1} (the model's block_size - 1)"
            )
        rows.append((ctx + cont)[-block_size:])
    device = next(model.parameters()).device
    T = max(len(r) for r in rows)
    x = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r)  # right padding: later pads never affect earlier positions
    was_training = model.training
    model.eval()
    logprobs = F.log_softmax(model(x.to(device))[0].float(), dim=-1)  # (choices, T, V)
    model.train(was_training)
    scores = []
    for i, (r, cont) in enumerate(zip(rows, conts)):
        n = len(cont)
        # Positions len(r)-n-1 .. len(r)-2 predict the n choice tokens.
        picked = logprobs[i, len(r) - n - 1 : len(r) - 1].gather(-1, torch.tensor(cont, device=device)[:, None])
        scores.append((picked.sum().item(), n))
    return scores


def evaluate_multiple_choice(
    model: Transformer, tokenizer, items: Sequence[MCItem], normalize: str = "none"
) -> MCReport:
    """Accuracy of picking, for each item, the choice with the highest (normalised) log-likelihood."""
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZATIONS)}; got {normalize!r}")
    if not items:
        raise DataError("no multiple-choice items to evaluate")
    predictions = []
    for item in items:
        scores = []
        for choice, (logprob, n_tokens) in zip(
            item.choices, choice_logprobs(model, tokenizer, item.context, item.choices)
        ):
            length = {"none": 1, "tokens": n_tokens, "chars": len(choice)}[normalize]
            scores.append(logprob / length)
        predictions.append(max(range(len(scores)), key=scores.__getitem__))
    correct = sum(p == item.answer for p, item in zip(predictions, items))
    return MCReport(accuracy=correct / len(items), correct=correct, total=len(items), predictions=predictions)
