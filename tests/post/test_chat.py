"""The chat template: round trips, exact training masks, prompts, bad conversations."""

from __future__ import annotations

import pytest

from reference_llm.errors import DataError, TokenizerError
from reference_llm.model import IGNORE_INDEX
from reference_llm.posttrain.sft import sft_example
from reference_llm.tokenizer import load_tokenizer, train_tokenizer
from reference_llm.tokenizer.chat import (
    ASSISTANT,
    CHAT_TOKENS,
    END,
    SYSTEM,
    USER,
    add_chat_tokens,
    chat_token_ids,
    decode_chat,
    encode_chat,
    encode_prompt,
    render_chat,
)

TEXTS = ["abcdefg hello there, how are you? I am fine. Be brief."]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello there, how are you?"},
    {"role": "assistant", "content": "I am fine."},
    {"role": "user", "content": "how?"},
    {"role": "assistant", "content": "fine"},
]


@pytest.fixture(scope="module", params=["char", "bpe"])
def tokenizer(request):
    return add_chat_tokens(train_tokenizer(request.param, TEXTS, None if request.param == "char" else 300))


def test_round_trip(tokenizer):
    ids, mask = encode_chat(CONVERSATION, tokenizer)
    assert len(ids) == len(mask)
    assert tokenizer.decode(ids) == render_chat(CONVERSATION)
    assert tokenizer.encode(render_chat(CONVERSATION)) == ids  # the text form tokenizes to the same ids
    assert decode_chat(ids, tokenizer) == CONVERSATION


def test_exact_assistant_mask_and_sft_targets():
    tok = add_chat_tokens(train_tokenizer("char", ["abcdefg"], None))
    marks = chat_token_ids(tok)
    S, U, A, E = (marks[t] for t in (SYSTEM, USER, ASSISTANT, END))
    a, b, c, d, e, f, g = tok.encode("abcdefg")
    conversation = [
        {"role": "system", "content": "ab"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "de"},
        {"role": "user", "content": "f"},
        {"role": "assistant", "content": "g"},
    ]
    ids, mask = encode_chat(conversation, tok)
    assert ids == [S, a, b, E, U, c, E, A, d, e, E, U, f, E, A, g, E]
    # Learned: each assistant content token and the <|end|> closing an assistant turn; nothing else.
    assert [i for i, m in enumerate(mask) if m] == [8, 9, 10, 15, 16]

    inputs, targets = sft_example(conversation, tok)
    assert inputs == ids
    expected = [IGNORE_INDEX] * len(ids)
    for position in (8, 9, 10, 15, 16):
        expected[position - 1] = ids[position]  # the target at t is the token at t + 1
    assert targets == expected


def test_prompt_asks_for_the_assistant(tokenizer):
    ids = encode_prompt(CONVERSATION[:2], tokenizer)
    assert ids[-1] == chat_token_ids(tokenizer)[ASSISTANT]
    assert tokenizer.decode(ids) == render_chat(CONVERSATION[:2], add_generation_prompt=True)
    with pytest.raises(DataError, match="must end with a user message"):
        encode_prompt(CONVERSATION[:3], tokenizer)


def test_add_chat_tokens_keeps_existing_ids_and_is_saved(tmp_path):
    for kind, size in (("char", None), ("bpe", 300), ("hf-bpe", 300)):
        base = train_tokenizer(kind, TEXTS, size)
        grown = add_chat_tokens(base)
        assert add_chat_tokens(grown) is grown
        assert all(grown.special_tokens[t] == i for t, i in base.special_tokens.items())
        assert [grown.special_tokens[t] for t in CHAT_TOKENS] == list(range(base.vocab_size, base.vocab_size + 4))
        assert grown.encode(TEXTS[0]) == base.encode(TEXTS[0])
        reloaded = load_tokenizer(grown.save(tmp_path / f"{kind}.json"))
        assert reloaded.special_tokens == grown.special_tokens


def test_tokenizer_without_chat_tokens_is_refused():
    with pytest.raises(TokenizerError, match="no chat tokens"):
        encode_chat(CONVERSATION, train_tokenizer("char", TEXTS, None))


@pytest.mark.parametrize(
    "conversation, message",
    [
        ([{"role": "user", "content": "hello"}], "no assistant turn"),
        ([], "non-empty list"),
        ([{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "hi"}], "role 'robot'"),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "x"},
                {"role": "assistant", "content": "b"},
            ],
            "system message may only come first",
        ),
        ([{"role": "user", "text": "hi"}], "exactly 'role' and 'content'"),
    ],
)
def test_bad_conversations(tokenizer, conversation, message):
    with pytest.raises(DataError, match=message):
        encode_chat(conversation, tokenizer)
