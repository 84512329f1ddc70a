"""The chat template: how a conversation becomes token ids, and which of them SFT learns.

Each turn is a role token, the content's ordinary tokens, and an end-of-turn token:

    <|system|>You are terse.<|end|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>

The four markers are special tokens (single ids that plain text never produces by merging). To ask the
model for a reply, a prompt ends with `<|assistant|>` (`encode_prompt`); generation stops at `<|end|>`.
For training, `encode_chat` also returns a mask that is True on the tokens the model must learn to
produce: every assistant turn's content and its closing `<|end|>` (so the model learns to stop), and
nothing else: not the system prompt, not the user's words, not the role markers, which are given.

The marker ids are inserted directly and each content is encoded on its own. Contents are encoded with
the tokenizer's `encode`, which turns marker text such as "<|end|>" into the marker id, so a server
that takes contents from untrusted users should reject contents that contain `CHAT_TOKENS`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from reference_llm.errors import DataError, TokenizerError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
ROLES = ("system", "user", "assistant")

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


def check_conversation(messages: Any, where: str, require_assistant: bool = True) -> list[Message]:
    """Validate one conversation; errors name `where` (e.g. "chat.jsonl line 3")."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: a conversation must be a non-empty list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise DataError(f"{where}: message {i} must be an object with exactly 'role' and 'content'")
        if message["role"] not in ROLES:
            raise DataError(f"{where}: message {i} has role {message['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise DataError(f"{where}: message {i} content must be a string")
        if message["role"] == "system" and i != 0:
            raise DataError(f"{where}: a system message may only come first (found at message {i})")
    if require_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn, so there is nothing to train on")
    return messages


def chat_token_ids(tokenizer) -> dict[str, int]:
    """Marker string -> id; a tokenizer without the markers cannot encode chats."""
    specials = tokenizer.special_tokens
    missing = [t for t in CHAT_TOKENS if t not in specials]
    if missing:
        raise TokenizerError(
            f"the tokenizer has no chat tokens {', '.join(missing)}; SFT adds them "
            f"(reference_llm.tokenizer.chat.add_chat_tokens), so use an SFT checkpoint"
        )
    return {t: specials[t] for t in CHAT_TOKENS}


def add_chat_tokens(tokenizer):
    """The same tokenizer plus whichever chat markers it lacks, as special tokens with new ids after
    every existing id (so every id it already had keeps its meaning). Unchanged if it has them all.

    Works on the saved form, which every tokenizer kind can be rebuilt from: the `added_tokens` list
    of a tokenizer.json (BPE kinds) or the `special_tokens` list of a char tokenizer's file.
    """
    missing = [t for t in CHAT_TOKENS if t not in tokenizer.special_tokens]
    if not missing:
        return tokenizer
    saved = json.loads(tokenizer.to_bytes())
    if isinstance(saved.get("added_tokens"), list):
        saved["added_tokens"] += [
            {
                "id": tokenizer.vocab_size + i,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, token in enumerate(missing)
        ]
    elif isinstance(saved.get("special_tokens"), list):
        saved["special_tokens"] += missing  # char tokenizer: specials take ids after the characters, in order
    else:
        raise TokenizerError(
            f"cannot add chat tokens to a {type(tokenizer).__name__}: its saved form has "
            f"neither 'added_tokens' nor 'special_tokens'"
        )
    grown = type(tokenizer).from_dict(saved, "tokenizer with chat tokens")
    if any(grown.special_tokens.get(t) != i for t, i in tokenizer.special_tokens.items()):
        raise TokenizerError("adding the chat tokens changed the ids of existing special tokens")
    return grown


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The template as text (what `decode(encode_chat(...)[0])` gives back)."""
    text = "".join(f"{ROLE_TOKENS[m['role']]}{m['content']}{END}" for m in messages)
    return text + (ASSISTANT if add_generation_prompt else "")


def encode_chat(messages: Sequence[Message], tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of a whole conversation and, per id, whether SFT trains on it (see the module docstring).

    The conversation must contain an assistant turn: without one there is nothing to learn.
    """
    check_conversation(list(messages), "conversation", require_assistant=True)
    ids_of = chat_token_ids(tokenizer)
    ids: list[int] = []
    mask: list[bool] = []
    for message in messages:
        learn = message["role"] == "assistant"
        content = tokenizer.encode(message["content"])
        ids += [ids_of[ROLE_TOKENS[message["role"]]], *content, ids_of[END]]
        mask += [False] + [learn] * (len(content) + 1)
    return ids, mask


def encode_prompt(messages: Sequence[Message], tokenizer) -> list[int]:
    """Token ids that ask for the next assistant turn: the conversation so far, then `<|assistant|>`.

    The conversation must end with a user turn.
    """
    messages = check_conversation(list(messages), "conversation", require_assistant=False)
    if messages[-1]["role"] != "user":
        raise DataError(f"conversation: a prompt must end with a user message, not {messages[-1]['role']!r}")
    ids_of = chat_token_ids(tokenizer)
    ids: list[int] = []
    for message in messages:
        ids += [ids_of[ROLE_TOKENS[message["role"]]], *tokenizer.encode(message["content"]), ids_of[END]]
    return ids + [ids_of[ASSISTANT]]


def decode_chat(ids: Sequence[int], tokenizer) -> list[Message]:
    """Inverse of `encode_chat`: split ids at the role and end markers and decode each content."""
    ids_of = chat_token_ids(tokenizer)
    role_of = {ids_of[token]: role for role, token in ROLE_TOKENS.items()}
    messages: list[Message] = []
    role: str | None = None
    content: list[int] = []
    for i, token in enumerate(ids):
        if token in role_of and role is None:
            role, content = role_of[token], []
        elif token == ids_of[END] and role is not None:
            messages.append({"role": role, "content": tokenizer.decode(content)})
            role = None
        elif role is not None:
            content.append(token)
        else:
            raise DataError(f"token {i} (id {token}) lies outside a turn; a turn starts with a role token")
    if role is not None:
        raise DataError(f"the last {role} turn has no {END} token")
    return messages
