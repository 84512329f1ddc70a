"""Supervised fine-tuning (SFT) on conversations.

    python -m reference_llm.posttrain.sft --checkpoint runs/demo [--config configs/sft.toml] [section.key=value ...]

A post-training config is a run config (reference_llm/config.py: [model], [data], [train], [eval],
[checkpoint]) plus its own section and an optional [lora] section. Every key is optional; the [train]
defaults are `SFT_TRAIN_DEFAULTS` (shorter and gentler than pretraining's), and the output goes to
`<init run dir>-sft` unless `checkpoint.dir` says otherwise.

    [sft]
    init = "runs/demo"     # pretrained checkpoint (run or step directory); "" = random init from [model]
    data = "demo"          # "demo" (chatterbot + chitchat: DEMO DATA) or a JSONL file of {"messages": [...]}
    max_examples = 0       # 0: every conversation
    pack = true            # pack several conversations into each training row

    [lora]                 # present (and enabled = true, the default) -> train LoRA adapters only
    r = 8
    alpha = 16.0
    dropout = 0.05
    targets = ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]

With `init` set, the checkpoint fixes the model; a [model] section must then agree with it. `[data]`
matters only for a random init (the tokenizer kind and size to train on the conversations), and
`data.val_fraction` of the conversations is held out for the validation loss.

What SFT does:
- The tokenizer gains the chat markers (`reference_llm.tokenizer.chat.add_chat_tokens`); when the model's
  embedding table is too small for the new ids, it grows (`resize_vocab`): new rows start at the mean
  of the existing embeddings (Hewitt 2021, "Initializing New Word Embeddings for Pretrained Language
  Models"), so the new tokens start as an "average" token instead of random noise. Like pretraining,
  it rounds the size up to a multiple of 64, so there is usually room already and nothing grows.
- The loss covers only the assistant's tokens (`reference_llm.tokenizer.chat.encode_chat`); every other target
  is IGNORE_INDEX.
- Packing (`pack_examples`) concatenates conversations into rows of exactly `seq_len` tokens. The
  targets are computed per conversation before packing, so no target ever crosses a boundary: the last
  position of one conversation has an IGNORE_INDEX target, never the first token of the next.
  Attention does cross boundaries: the model has no document mask (the architecture takes none), so a
  conversation can attend to the one packed before it, as in GPT-style pretraining on concatenated
  documents. The extra context is unrelated text that the model learns to ignore; `pack = false` puts
  each conversation in its own padded row when that matters more than speed.
- Checkpoints, LoRA and `--resume` are the post-training run's (`reference_llm.posttrain.run`).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from reference_llm.errors import ConfigError, DataError, TokenizerError
from reference_llm.model import IGNORE_INDEX
from reference_llm.posttrain.data import Message, demo_conversations, load_conversations
from reference_llm.posttrain.run import PostTrainRun, load_posttrain_config, posttrain_parser
from reference_llm.tokenizer.chat import encode_chat
from reference_llm.train.loop import Batch, evaluate

Example = tuple[list[int], list[int]]  # one conversation's inputs and targets, the same length


# Pretraining's [train] defaults would run 2,000 steps at lr 1e-3; fine-tuning wants fewer, gentler steps.
SFT_TRAIN_DEFAULTS = {"max_steps": 300, "lr": 3e-4, "min_lr": 3e-5, "warmup_steps": 20}


@dataclass
class SFTConfig:
    init: str = ""  # checkpoint to fine-tune; "" = random init from [model] (tests, smoke runs)
    data: str = "demo"  # "demo" or a JSONL file of {"messages": [...]}
    max_examples: int = 0  # 0: every conversation
    pack: bool = True


# ----------------------------------------------------------------------------------------------------
# Examples and packing
# ----------------------------------------------------------------------------------------------------


def sft_example(messages: Sequence[Message], tokenizer) -> Example:
    """Inputs and targets of one conversation, the same length: targets[t] is inputs[t + 1] when that
    token is an assistant token, else IGNORE_INDEX (and the last target is always IGNORE_INDEX)."""
    ids, learn = encode_chat(messages, tokenizer)
    targets = [nxt if learn_next else IGNORE_INDEX for nxt, learn_next in zip(ids[1:], learn[1:])]
    return ids, targets + [IGNORE_INDEX]


def _rows(examples: Sequence[Example], seq_len: int, pack: bool) -> list[Example]:
    """Group examples (already at most seq_len long) into rows of at most seq_len tokens."""
    rows: list[Example] = []
    for ids, targets in examples:
        if rows and pack and len(rows[-1][0]) + len(ids) <= seq_len:
            rows[-1][0].extend(ids)
            rows[-1][1].extend(targets)
        else:
            rows.append((list(ids), list(targets)))
    return rows


def pack_examples(examples: Sequence[Example], seq_len: int, pad_id: int, pack: bool = True) -> Batch:
    """Rows (N, seq_len) of inputs and targets. With `pack`, consecutive examples share a row while
    they fit; otherwise one example per row. Examples longer than seq_len are cut to seq_len (their
    remaining targets are still correct next tokens) and dropped if no target is left; padding has
    IGNORE_INDEX targets."""
    kept = []
    for ids, targets in examples:
        ids, targets = ids[:seq_len], targets[:seq_len]
        if any(t != IGNORE_INDEX for t in targets):
            kept.append((ids, targets))
    if not kept:
        raise DataError(
            f"no conversation has an assistant token within the first {seq_len} tokens; "
            f"raise train.seq_len (up to model.block_size) or use shorter conversations"
        )
    rows = _rows(kept, seq_len, pack)
    x = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    y = torch.full((len(rows), seq_len), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, targets) in enumerate(rows):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, : len(targets)] = torch.tensor(targets)
    return x, y


# ----------------------------------------------------------------------------------------------------
# SFT
# ----------------------------------------------------------------------------------------------------


def load_sft_conversations(config: SFTConfig, seed: int) -> list[list[Message]]:
    if config.data == "demo":
        return demo_conversations(limit=config.max_examples, seed=seed)
    conversations = load_conversations(config.data)
    return conversations[: config.max_examples] if config.max_examples > 0 else conversations


def encode_examples(conversations: Sequence[Sequence[Message]], tokenizer) -> tuple[list[Example], int]:
    """`sft_example` of each conversation, skipping those the tokenizer cannot encode (a character
    tokenizer meets characters its training text lacked). Returns the examples and the skip count."""
    examples, skipped = [], 0
    for messages in conversations:
        try:
            examples.append(sft_example(messages, tokenizer))
        except TokenizerError:
            skipped += 1
    return examples, skipped


def train_sft(
    config_path: str | Path | None, overrides: Sequence[str] = (), init: str | None = None, resume: bool = False
) -> dict:
    """Run SFT as configured (`init` overrides sft.init); returns the final logged metrics."""
    config = load_posttrain_config(config_path, overrides, "sft", SFTConfig, SFT_TRAIN_DEFAULTS, init)
    sft, run = config.method, config.run
    conversations = load_sft_conversations(sft, run.train.seed)
    n_val = int(len(conversations) * run.data.val_fraction) if len(conversations) > 1 else 0
    train_convs, val_convs = conversations[n_val:], conversations[:n_val]
    job = PostTrainRun(config, lambda: [m["content"] for c in train_convs for m in c], resume=resume)
    examples, skipped = encode_examples(train_convs, job.tokenizer)
    if skipped:
        job.note(f"skipped {skipped} conversations with characters the tokenizer cannot encode")
    seq_len = run.seq_len
    x, y = pack_examples(examples, seq_len, job.pad_id, pack=sft.pack)
    source = "DEMO DATA (chatterbot-corpus + chitchat-dataset)" if sft.data == "demo" else sft.data
    job.note(
        f"SFT on {len(examples)} conversations from {source}: {x.shape[0]} rows of {seq_len} tokens, "
        f"{int((y != IGNORE_INDEX).sum())} trained (assistant) tokens"
    )

    def next_batch() -> Batch:
        rows = job.rows.draw(x.shape[0], run.train.micro_batch)
        return x[rows], y[rows]

    validate = None
    try:
        vx, vy = pack_examples(encode_examples(val_convs, job.tokenizer)[0], seq_len, job.pad_id, pack=sft.pack)
    except DataError:  # no held-out conversation left with something to score: train without validation
        job.note(f"no validation loss: data.val_fraction={run.data.val_fraction} left no usable conversation")
    else:
        b = run.train.micro_batch
        val_batches = [(vx[i : i + b], vy[i : i + b]) for i in range(0, vx.shape[0], b)][: run.eval.iters]
        if val_batches:  # none when eval.iters = 0, which switches validation off as in pretraining

            def validate() -> dict[str, float]:
                return {"val_loss": evaluate(job.model, val_batches, job.device, job.dtype)}

    return job.fit(job.model, next_batch, validate=validate, extra_state={"sft": dataclasses.asdict(sft)})


def main(argv: list[str]) -> int:
    parser = posttrain_parser("sft", "Supervised fine-tuning on conversations (loss on assistant tokens only).")
    args = parser.parse_args(argv)
    if args.config is None and args.checkpoint is None:
        raise ConfigError("give --checkpoint DIR (the model to fine-tune), --config FILE, or both")
    last = train_sft(args.config, args.overrides, args.checkpoint, resume=args.resume)
    print("done: " + " | ".join(f"{k} {v:.4g}" for k, v in last.items() if k in ("step", "loss", "val_loss")))
    return 0


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
