"""Generation: greedy/sampled decoding, KV cache, ragged batches, stops, streaming, the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from reference_llm.cli import run_main
from reference_llm.config import RunConfig
from reference_llm.deploy.generate import generate, generate_text, main, sample_next
from reference_llm.errors import ConfigError
from reference_llm.model import ModelConfig, Transformer
from reference_llm.tokenizer import train_tokenizer
from reference_llm.train.checkpoint import save_checkpoint, unique_state_dict

PROMPTS = [[5, 17, 3, 99, 42, 7], [8], [250, 251, 252]]  # ragged on purpose


@pytest.fixture(scope="module", params=["tiny", "tiny-gpt2"])
def model(request) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset(request.param)).eval()


def naive_greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """The definition of greedy decoding: run the whole sequence, take the argmax, append."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt) :]


def test_greedy_matches_the_naive_loop_and_is_deterministic(model):
    out = generate(model, [PROMPTS[0]], 12)
    assert out == [naive_greedy(model, PROMPTS[0], 12)]
    assert generate(model, [PROMPTS[0]], 12) == out


def test_cached_equals_uncached(model):
    assert generate(model, PROMPTS, 15, use_cache=True) == generate(model, PROMPTS, 15, use_cache=False)


def test_batched_equals_one_by_one(model):
    batched = generate(model, PROMPTS, 15)
    assert batched == [generate(model, [p], 15)[0] for p in PROMPTS]
    assert all(len(row) == 15 for row in batched)


def test_top_k_1_and_tiny_top_p_equal_greedy(model):
    greedy = generate(model, PROMPTS, 10)
    assert generate(model, PROMPTS, 10, temperature=1.0, top_k=1, seed=3) == greedy
    assert generate(model, PROMPTS, 10, temperature=1.0, top_p=1e-6, seed=3) == greedy


def test_sampling_is_reproducible_with_a_seed(model):
    a = generate(model, PROMPTS, 20, temperature=1.0, seed=123)
    assert generate(model, PROMPTS, 20, temperature=1.0, seed=123) == a
    assert generate(model, PROMPTS, 20, temperature=1.0, seed=124) != a  # random weights: near-uniform
    assert generate(model, PROMPTS, 20, temperature=1.0, seed=123, use_cache=False) == a


def test_sample_next_keeps_only_the_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    # Nucleus 0.7: 0.5 alone is short of it, 0.5 + 0.3 reaches it, so tokens 0 and 1 remain.
    assert set(sample_next(logits, 1.0, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.9, generator=g).tolist()) == {0, 1, 2}
    assert set(sample_next(logits, 1.0, generator=g).tolist()) == {0, 1, 2, 3}


def test_extreme_temperature_and_top_p_still_pick_the_most_likely_token():
    # Dividing raw logits by 1e-300 overflows them to +-inf and the softmax to NaN; a top_p that rounds to
    # 0 in float32 used to drop every token. Both limits are greedy decoding.
    logits = torch.tensor([[2.0, 5.0, -1.0, 4.9], [0.0, 0.0, 3.0, -7.0]])
    naive = torch.softmax(logits / 1e-300, dim=-1)
    assert torch.isnan(naive).any()  # the failure the shift before dividing avoids
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample_next(logits, 1e-300, generator=g).tolist() == [1, 2]
        assert sample_next(logits, 1.0, top_p=5e-324, generator=g).tolist() == [1, 2]


def test_stop_id_ends_the_row_and_is_not_returned(model):
    free = generate(model, PROMPTS, 10)
    stop = free[0][3]
    first = free[0].index(stop)
    out = generate(model, PROMPTS, 10, stop_ids=[stop])
    assert out[0] == free[0][:first]
    for row, other in zip(out[1:], free[1:]):  # other rows stop only where they meet the same token
        assert row == (other[: other.index(stop)] if stop in other else other)


def test_callback_receives_every_token_and_can_stop_a_row(model):
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    out = generate(model, PROMPTS, 9, on_token=lambda row, tok: seen[row].append(tok))
    assert [seen[r] for r in range(3)] == out

    out = generate(model, PROMPTS, 9, on_token=lambda row, tok: row == 1 and len(seen[1]) >= 0)
    assert len(out[1]) == 1 and len(out[0]) == 9 and len(out[2]) == 9


def test_vocab_size_limits_the_sampled_ids(model):
    """Ids past the tokenizer's vocabulary (the padding rows of the embedding) are never produced."""
    for kwargs in (dict(), dict(temperature=2.0, seed=0)):
        out = generate(model, PROMPTS, 30, vocab_size=10, **kwargs)
        assert all(0 <= t < 10 for row in out for t in row)


def test_block_size_is_respected(model):
    block = model.config.block_size
    with pytest.raises(ConfigError, match="block_size"):
        generate(model, [[1] * (block + 1)], 5)
    out = generate(model, [[1] * (block - 4), [2, 3]], 100)
    assert len(out[0]) == 4  # both rows stop at the end of the context
    assert len(out[1]) == block - 2
    assert generate(model, [[1] * block], 5) == [[]]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=-1.0),
        dict(temperature=1.0, top_k=0),
        dict(temperature=1.0, top_p=0.0),
        dict(temperature=1.0, top_p=1.5),
    ],
)
def test_bad_sampling_settings(model, kwargs):
    with pytest.raises(ConfigError):
        generate(model, PROMPTS, 3, **kwargs)


def test_empty_prompt_is_an_error(model):
    with pytest.raises(ConfigError, match="empty prompt"):
        generate(model, [[1, 2], []], 3)


# ----------------------------------------------------------------------------------------------------
# Text level and CLI
# ----------------------------------------------------------------------------------------------------

TEXT = "to be or not to be, that is the question; whether tis nobler in the mind to suffer"


@pytest.fixture(scope="module")
def char_model():
    torch.manual_seed(1)
    tokenizer = train_tokenizer("char", [TEXT], None)
    model = Transformer(ModelConfig.preset("tiny-gpt2", vocab_size=tokenizer.vocab_size)).eval()
    return model, tokenizer


def test_stop_string_cuts_the_text_and_streaming_sends_what_is_returned(char_model):
    model, tokenizer = char_model
    free = generate_text(model, tokenizer, ["to be"], 30, stop_ids=[])[0]
    stop = free[5:7]
    pieces: list[str] = []
    out = generate_text(
        model, tokenizer, ["to be"], 30, stop=[stop], stop_ids=[], on_text=lambda row, piece: pieces.append(piece)
    )[0]
    assert out == free[: free.index(stop)]
    assert "".join(pieces) == out


@pytest.fixture(scope="module")
def checkpoint_dir(char_model, tmp_path_factory):
    model, tokenizer = char_model
    run_dir = tmp_path_factory.mktemp("gen_run")
    state = {
        "step": 1,
        "config": RunConfig(model=model.config).to_dict(),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
    }
    save_checkpoint(run_dir, 1, unique_state_dict(model), None, state, tokenizer)
    return run_dir


def test_cli_streams_the_greedy_continuation(char_model, checkpoint_dir, capsys):
    model, tokenizer = char_model
    code = run_main(
        main, ["--checkpoint", str(checkpoint_dir), "--prompt", "to be", "--temperature", "0", "--max-new-tokens", "20"]
    )
    assert code == 0
    expected = "to be" + generate_text(model, tokenizer, ["to be"], 20, stop_ids=[])[0]
    assert capsys.readouterr().out == expected + "\n"


def test_cli_bad_input_is_one_line_and_exit_2(checkpoint_dir, tmp_path):
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "reference_llm.deploy.generate",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--prompt",
            "x",
        ],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1
    assert run_main(main, ["--checkpoint", str(checkpoint_dir), "--prompt", "to", "--top-p", "2"]) == 2
    assert run_main(main, ["--checkpoint", str(checkpoint_dir), "--prompt", "to", "--chat"]) == 2  # no chat tokens
