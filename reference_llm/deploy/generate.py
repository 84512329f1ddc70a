"""Autoregressive generation: greedy and sampled decoding, a KV cache, batches of ragged prompts.

Library:

    new_ids = generate(model, [[5, 9, 2], [7]], max_new_tokens=50, temperature=0.8, top_p=0.95, seed=0)
    texts = generate_text(model, tokenizer, ["ROMEO:"], max_new_tokens=50, stop=["\\n\\n"])

CLI (streams the continuation to stdout):

    python -m reference_llm.deploy.generate --checkpoint runs/demo --prompt "ROMEO:" --max-new-tokens 200

Batches of prompts of different lengths need no padding mask. As in Meta's reference Llama generation
(github.com/meta-llama/llama, `generation.py`), every row is written into one (B, total_len) buffer; the
first `min_prompt_len` positions are processed at once, then one position per step for every row. A row
whose prompt is longer than the current position keeps its own prompt token there instead of the sampled
one, so each row only ever attends to its own real tokens and no mask is needed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from reference_llm.cli import ArgumentParser
from reference_llm.errors import ConfigError
from reference_llm.model import KVCache, Transformer
from reference_llm.tokenizer.chat import END, encode_prompt
from reference_llm.train.checkpoint import load_model
from reference_llm.train.perf import resolve_device

# on_token(row, token_id) is called for every generated token that is kept in the output, in order.
# Returning True ends that row after this token (the text-level helper uses this for stop strings).
TokenCallback = Callable[[int, int], "bool | None"]
# on_text(row, piece) receives the decoded continuation of a row piece by piece, stop strings excluded.
TextCallback = Callable[[int, str], None]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Reject sampling settings that have no meaning, naming the setting and the accepted range."""
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be a positive integer or unset, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1] or unset, got {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, V); returns (B,) int64.

    temperature 0 is greedy (argmax). Otherwise the logits are divided by the temperature, cut to the
    `top_k` most likely tokens, then to the smallest set whose probability reaches `top_p` (nucleus
    sampling, Holtzman et al. 2019), and one token is drawn from what is left.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    # Shift each row's maximum to 0 before dividing, and keep the temperature a normal float32: a tiny
    # temperature then sends the other logits towards -inf instead of the maximum to +inf or 0/0, which
    # would make the softmax NaN. Its limit is greedy decoding, which is what it gives.
    logits = logits.float()
    temperature = max(temperature, torch.finfo(torch.float32).tiny)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the smallest logit that survives
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the most likely always stays.
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        drop_sorted[:, 0] = False  # explicitly: cumsum rounding must not drop it for a top_p near 0
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off while generating, and the caller's train/eval mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.inference_mode()
def generate(
    model: Transformer,
    prompts_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Sequence[int] = (),
    on_token: TokenCallback | None = None,
    use_cache: bool = True,
    seed: int | None = None,
    vocab_size: int | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` tokens; returns the new tokens of each row.

    - `stop_ids`: a row ends when it samples one of these; the stop token itself is not returned.
    - `on_token(row, token_id)`: streaming hook, see `TokenCallback`.
    - `use_cache`: reuse keys/values of earlier positions (`KVCache`); without it every step runs the
      whole sequence again. Both give the same tokens.
    - `seed`: makes sampling reproducible; None draws from torch's global generator.
    - `vocab_size`: sample only ids below it, i.e. ids the tokenizer knows (the model's embedding table
      is rounded up to a multiple of 64, and an untrained model may pick a padding row).
    - The context is `model.config.block_size`: a longer prompt is an error; generation stops for every
      row when the buffer reaches it (rows then hold fewer than `max_new_tokens` tokens).
    """
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not prompts_ids:
        return []
    block_size = model.config.block_size
    lengths = [len(p) for p in prompts_ids]
    if min(lengths) == 0:
        raise ConfigError("every prompt needs at least one token; got an empty prompt")
    if max(lengths) > block_size:
        raise ConfigError(
            f"a prompt has {max(lengths)} tokens but the model's block_size is {block_size}; shorten the prompt"
        )

    device = next(model.parameters()).device
    B = len(prompts_ids)
    total_len = min(block_size, max(lengths) + max_new_tokens)
    tokens = torch.zeros(B, total_len, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts_ids):
        tokens[row, : len(prompt)] = torch.tensor(list(prompt), dtype=torch.long, device=device)
    lengths_t = torch.tensor(lengths, device=device)
    in_prompt = torch.arange(total_len, device=device)[None, :] < lengths_t[:, None]  # (B, total_len)
    row_end = (lengths_t + max_new_tokens).clamp(max=total_len)  # exclusive end of each row's output
    finished = row_end <= lengths_t  # rows with nothing to generate (max_new_tokens 0, or a full context)
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    cache = None
    if use_cache:
        dtype = next(model.parameters()).dtype
        cache = KVCache.allocate(model.config, B, total_len, device=device, dtype=dtype)

    with _eval_mode(model):
        prev_pos = 0
        for pos in range(min(lengths), total_len):
            if bool(finished.all()):
                break
            if cache is not None:  # feed only the positions the cache has not seen yet
                logits, _ = model(tokens[:, prev_pos:pos], cache=cache)
            else:
                logits, _ = model(tokens[:, :pos])
            prev_pos = pos
            next_token = sample_next(logits[:, -1, :vocab_size], temperature, top_k, top_p, generator)
            forced = in_prompt[:, pos]
            next_token = torch.where(forced, tokens[:, pos], next_token)
            tokens[:, pos] = next_token
            generated = ~forced & ~finished
            hit_stop = generated & torch.isin(next_token, stop)
            row_end = torch.where(hit_stop, pos, row_end)  # the stop token is not part of the output
            finished |= hit_stop
            if on_token is not None:
                for row in (generated & ~hit_stop).nonzero().flatten().tolist():
                    if on_token(row, int(next_token[row])):
                        row_end[row] = pos + 1
                        finished[row] = True
            finished |= pos + 1 >= row_end
    return [tokens[row, lengths[row] : int(row_end[row])].tolist() for row in range(B)]


# ----------------------------------------------------------------------------------------------------
# Text level
# ----------------------------------------------------------------------------------------------------


def default_stop_ids(tokenizer) -> list[int]:
    """End-of-text and the chat template's end-of-turn token, where the tokenizer has them."""
    ids = [tokenizer.eot_id, tokenizer.special_tokens.get(END)]
    return [i for i in ids if i is not None]


class TextStream:
    """Decodes one row's tokens as they arrive, finds stop strings and emits only text that is final.

    Text is held back while it could still change: a trailing U+FFFD (the start of a multi-byte
    character split across tokens) and a tail that could grow into a stop string.
    """

    def __init__(self, tokenizer, stop: Sequence[str], emit: Callable[[str], None] | None) -> None:
        self.tokenizer, self.stop, self.emit = tokenizer, [s for s in stop if s], emit
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of self.text already emitted

    def push(self, token: int) -> bool:
        """Add a token; True when a stop string has appeared (the text is cut before it)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = text[: min(hits)]
            self._send(len(self.text))
            return True
        self.text = text
        final = text.rstrip("\ufffd")
        hold = max((k for s in self.stop for k in range(1, len(s)) if final.endswith(s[:k])), default=0)
        self._send(len(final) - hold)
        return False

    def close(self) -> None:
        self._send(len(self.text))

    def _send(self, end: int) -> None:
        if end > self.sent:
            if self.emit is not None:
                self.emit(self.text[self.sent : end])
            self.sent = end


def generate_text(
    model: Transformer,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    max_new_tokens: int,
    stop: Sequence[str] = (),
    stop_ids: Sequence[int] | None = None,
    on_text: TextCallback | None = None,
    **sampling,
) -> list[str]:
    """Text out: `generate` from each prompt (a string, or token ids such as `chat.encode_prompt`'s)
    and decode the continuation.

    `stop` strings end a row and are cut from its text (the text before them is kept); `stop_ids`
    defaults to `default_stop_ids(tokenizer)`. `on_text(row, piece)` streams each row's text.
    `sampling` is passed to `generate` (temperature, top_k, top_p, use_cache, seed).
    """

    def row_callback(row: int) -> Callable[[str], None] | None:
        if on_text is None:
            return None
        return lambda piece: on_text(row, piece)

    streams = [TextStream(tokenizer, stop, row_callback(row)) for row in range(len(prompts))]
    prompts_ids = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    generate(
        model,
        prompts_ids,
        max_new_tokens,
        stop_ids=default_stop_ids(tokenizer) if stop_ids is None else stop_ids,
        on_token=lambda row, token: streams[row].push(token),
        vocab_size=tokenizer.vocab_size,
        **sampling,
    )
    for stream in streams:
        stream.close()
    return [stream.text for stream in streams]


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="python -m reference_llm.deploy.generate",
        description="Continue a prompt with a trained checkpoint, streaming to stdout.",
    )
    parser.add_argument("--checkpoint", required=True, help="a step directory or a run directory")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding (default 0.8)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-cache", action="store_true", help="recompute every position at each step")
    parser.add_argument(
        "--chat", action="store_true", help="wrap the prompt as a user turn of the chat template (for SFT checkpoints)"
    )
    args = parser.parse_args(argv)

    model, tokenizer, _ = load_model(args.checkpoint, resolve_device("auto"))
    prompt: str | list[int] = args.prompt
    if args.chat:
        prompt = encode_prompt([{"role": "user", "content": args.prompt}], tokenizer)
    else:
        sys.stdout.write(args.prompt)

    def write(_row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    generate_text(
        model,
        tokenizer,
        [prompt],
        args.max_new_tokens,
        stop=args.stop,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        use_cache=not args.no_cache,
        seed=args.seed,
        on_text=write,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
