"""Perplexity and bits per byte of a model on held-out text.

    result = evaluate_text(model, tokenizer, Path("heldout.txt").read_text())
    result.perplexity, result.bits_per_byte

Perplexity is exp(mean negative log-likelihood per token); it depends on the tokenizer, so two models
with different vocabularies cannot be compared by it. Bits per byte divides the same total by the text's
size in UTF-8 bytes instead: bpb = total nats / (bytes · ln 2), which compares across tokenizers
(Gao et al. 2020, "The Pile", section 5).

Long texts are scored in windows of the model's context. With `stride` equal to the context (the
default) every token is predicted once, from the tokens before it in its window, like the validation
loss during training. A smaller stride overlaps the windows so that every token after the first window
sees at least `block_size - stride` tokens of context, which lowers the figure at more compute (the
sliding-window method of the Hugging Face perplexity guide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reference_llm.errors import ConfigError, DataError
from reference_llm.model import IGNORE_INDEX, Transformer


@dataclass(frozen=True)
class PerplexityResult:
    nats: float  # total negative log-likelihood of the scored tokens
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text those tokens spell

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nats / (self.bytes * math.log(2))

    def to_dict(self) -> dict[str, float | int]:
        return {
            "tokens": self.tokens,
            "bytes": self.bytes,
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
        }


@torch.no_grad()
def evaluate_text(
    model: Transformer, tokenizer, text: str, stride: int | None = None, batch_size: int = 4
) -> PerplexityResult:
    """Score every token of `text`. With an end-of-text token the text is scored from its first token
    (the model sees <eot> first, as at a document boundary in training); without one the first token
    has no prediction and its bytes are left out of the byte count."""
    block_size = model.config.block_size
    stride = block_size if stride is None else stride
    if not 1 <= stride <= block_size:
        raise ConfigError(f"stride must be between 1 and the model's block_size={block_size}, got {stride}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
    ids = tokenizer.encode(text)
    n_bytes = len(text.encode("utf-8"))
    if tokenizer.eot_id is not None:
        ids = [tokenizer.eot_id] + ids
    elif ids:
        n_bytes -= len(tokenizer.decode(ids[:1]).encode("utf-8"))
    if len(ids) < 2 or n_bytes <= 0:
        raise DataError("the text is too short to score: it needs at least two tokens")

    windows = _windows(ids, block_size, stride)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats, scored = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        T = max(len(x) for x, _ in batch)
        # Right padding: a causal model's earlier positions never see the pad, and pads are not scored.
        x = torch.zeros(len(batch), T, dtype=torch.long)
        y = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
        for row, (inp, tgt) in enumerate(batch):
            x[row, : len(inp)] = torch.tensor(inp)
            y[row, : len(tgt)] = torch.tensor(tgt)
        logits, _ = model(x.to(device))
        y = y.to(device)
        nats += F.cross_entropy(
            logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        ).item()
        scored += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    return PerplexityResult(nats=nats, tokens=scored, bytes=n_bytes)


def _windows(ids: list[int], block_size: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) per window; targets already scored by an earlier window are IGNORE_INDEX.

    Window inputs are ids[begin:end] and predict ids[begin+1:end+1]; each new window starts `stride`
    later, and only targets past the previous window's last one count.
    """
    windows = []
    last = len(ids) - 1  # index of the last target
    scored_until = 0  # targets ids[1..scored_until] are done
    for begin in range(0, last, stride):
        end = min(begin + block_size, last)
        inputs, targets = ids[begin:end], ids[begin + 1 : end + 1]
        fresh = end - scored_until
        targets = [IGNORE_INDEX] * (len(targets) - fresh) + targets[-fresh:]
        windows.append((inputs, targets))
        scored_until = end
        if end == last:
            break
    return windows
