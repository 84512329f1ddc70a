"""SFT: packing, vocabulary growth, loss on demo data, fine-tuning a checkpoint (with LoRA), bad input."""

from __future__ import annotations

import json

import pytest
import torch

from reference_llm.cli import run_main
from reference_llm.config import RunConfig
from reference_llm.deploy.generate import generate
from reference_llm.deploy.generate import main as generate_main
from reference_llm.errors import DataError
from reference_llm.model import IGNORE_INDEX, ModelConfig, Transformer
from reference_llm.posttrain.data import demo_conversations
from reference_llm.posttrain.lora import load_lora
from reference_llm.posttrain.run import resize_vocab
from reference_llm.posttrain.sft import main, pack_examples, train_sft
from reference_llm.tokenizer import train_tokenizer
from reference_llm.tokenizer.chat import CHAT_TOKENS
from reference_llm.train import loop as posttrain_run
from reference_llm.train import padded_vocab_size, train_step
from reference_llm.train.checkpoint import list_checkpoints, load_model, save_checkpoint, unique_state_dict
from reference_llm.train.metrics import read_metrics

I = IGNORE_INDEX  # noqa: E741


def test_packing_keeps_each_conversation_s_targets_to_itself():
    a = ([1, 2, 3], [I, 3, I])
    b = ([4, 5, 6, 7], [5, I, 7, I])
    c = ([8, 9], [9, I])
    x, y = pack_examples([a, b, c], seq_len=8, pad_id=0)
    assert x.tolist() == [[1, 2, 3, 4, 5, 6, 7, 0], [8, 9, 0, 0, 0, 0, 0, 0]]
    assert y.tolist() == [[I, 3, I, 5, I, 7, I, I], [9, I, I, I, I, I, I, I]]
    # Where one conversation ends and the next begins, the target is IGNORE_INDEX, never the next start.
    assert y[0, 2] == I and y[0, 6] == I

    x, y = pack_examples([a, b, c], seq_len=8, pad_id=0, pack=False)
    assert x.shape == (3, 8) and x[1].tolist() == [4, 5, 6, 7, 0, 0, 0, 0]


def test_packing_cuts_long_conversations_and_refuses_an_empty_result():
    x, y = pack_examples([([1, 2, 3, 4, 5], [2, 3, 4, 5, I]), ([6, 7, 8], [I, I, I])], seq_len=3, pad_id=0)
    assert x.tolist() == [[1, 2, 3]] and y.tolist() == [[2, 3, 4]]  # the second has nothing to learn
    with pytest.raises(DataError, match="no conversation has an assistant token"):
        pack_examples([([1, 2, 3, 4], [I, I, I, 4])], seq_len=3, pad_id=0)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])  # untied and tied output heads
def test_resize_vocab_keeps_old_tokens_and_starts_new_ones_at_the_mean(preset):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset(preset, vocab_size=100)).eval()
    idx = torch.randint(0, 100, (1, 10))
    before = model(idx)[0]
    resize_vocab(model, 104)
    assert model.config.vocab_size == 104 and model.tok_emb.weight.shape[0] == 104
    assert model.lm_head.weight.shape[0] == 104
    torch.testing.assert_close(model(idx)[0][..., :100], before)
    torch.testing.assert_close(model.tok_emb.weight[100], model.tok_emb.weight[:100].mean(0))
    assert (model.lm_head.weight is model.tok_emb.weight) == model.config.tie_embeddings


def test_demo_conversations_are_well_formed():
    conversations = demo_conversations(limit=200, seed=3)
    assert len(conversations) == 200
    for messages in conversations:
        roles = [m["role"] for m in messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and all(m["content"] for m in messages)


SFT_CONFIG = """
[sft]
{init}
data = "{data}"
max_examples = {n}
[train]
max_steps = {steps}
micro_batch = 8
lr = 3e-3
min_lr = 3e-4
warmup_steps = 2
log_interval = 1
dtype = "float32"
[eval]
interval = 0
iters = 4
[checkpoint]
dir = "{run}"
interval = 0
{extra}
"""
RANDOM_INIT = '[model]\npreset = "tiny"\nblock_size = 64\n[data]\ntokenizer = "char"'


def write_config(tmp_path, init: str = "", data: str = "demo", n: int = 150, steps: int = 2, extra: str = ""):
    path = tmp_path / "sft.toml"
    path.write_text(
        SFT_CONFIG.format(
            init=f'init = "{init}"' if init else "", data=data, n=n, steps=steps, run=tmp_path / "run", extra=extra
        )
    )
    return path


@pytest.mark.slow
def test_loss_falls_on_demo_data(tmp_path):
    config = write_config(tmp_path, n=300, steps=20, extra=RANDOM_INIT)
    assert run_main(main, ["--config", str(config)]) == 0
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:3]) / 3 - 0.8  # well below the uniform-guess start
    model, tokenizer, config = load_model(tmp_path / "run")
    assert set(CHAT_TOKENS) <= set(tokenizer.special_tokens)
    assert config.model.vocab_size >= tokenizer.vocab_size


@pytest.fixture()
def base_checkpoint(tmp_path):
    """A "pretrained" checkpoint whose tokenizer lacks the chat tokens and whose vocab is full."""
    texts = [m["content"] for c in demo_conversations(limit=100, seed=0) for m in c]
    tokenizer = train_tokenizer("char", texts, None)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64))
    state = {
        "step": 10,
        "config": RunConfig(model=model.config).to_dict(),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
    }
    return save_checkpoint(tmp_path / "base", 10, unique_state_dict(model), None, state, tokenizer)


def test_fine_tunes_a_checkpoint_with_lora_and_grows_the_vocabulary(tmp_path, base_checkpoint):
    config = write_config(tmp_path, init=str(base_checkpoint), extra="[lora]\nr = 2")
    assert run_main(main, ["--config", str(config)]) == 0
    base, base_tok, _ = load_model(base_checkpoint)
    tuned, tok, run_config = load_model(tmp_path / "run")
    assert tok.vocab_size == base_tok.vocab_size + len(CHAT_TOKENS)
    assert tuned.config.vocab_size == run_config.model.vocab_size == padded_vocab_size(tok.vocab_size)

    # The merged checkpoint is the base model, grown, plus the saved adapters.
    resize_vocab(base, padded_vocab_size(tok.vocab_size))
    load_lora(base, tmp_path / "run" / "step_0000002" / "adapter.safetensors")
    idx = torch.tensor([tok.encode("hello there")])
    torch.testing.assert_close(base.eval()(idx)[0], tuned(idx)[0], rtol=0, atol=1e-5)
    assert len(generate(tuned, [idx[0].tolist()], 5)[0]) == 5
    assert (
        run_main(
            generate_main,
            ["--checkpoint", str(tmp_path / "run"), "--chat", "--prompt", "hi", "--max-new-tokens", "5", "--seed", "0"],
        )
        == 0
    )


def test_checkpoint_flag_needs_no_config_and_writes_next_to_the_init_run(tmp_path, base_checkpoint, capsys):
    args = ["--checkpoint", str(tmp_path / "base"), "train.max_steps=1", "train.micro_batch=2", "sft.max_examples=40"]
    assert run_main(main, args) == 0
    _, tokenizer, config = load_model(tmp_path / "base-sft")
    assert config.train.max_steps == 1 and config.train.lr == 3e-4  # SFT's defaults, not pretraining's
    assert run_main(main, args + [f"checkpoint.dir={json.dumps(str(tmp_path / 'base'))}"]) == 2
    assert "would delete the ones you start from" in capsys.readouterr().err
    assert run_main(main, []) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        ('[model]\npreset = "tiny-gpt2"', "error: sft.init="),  # the preset's norm/position/mlp differ
        ("[model]\nd_model = 96", "model.d_model=64 but the config's [model] gives 96"),
        ("[train]\nseq_len = 128", "train.seq_len=128 exceeds the model's block_size=64"),
    ],
)
def test_checkpoint_that_does_not_match_the_config_is_exit_2(tmp_path, base_checkpoint, capsys, extra, message):
    config = write_config(tmp_path, init=str(base_checkpoint))
    config.write_text(
        config.read_text().replace("[train]", "[train]\nseq_len = 128")
        if "seq_len" in extra
        else config.read_text() + extra
    )
    assert run_main(main, ["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    "lines, message",
    [
        ([], "no conversations"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], "line 1: the conversation has no assistant turn"),
        (["not an object"], "line 1: expected an object"),
    ],
)
def test_bad_data_files(tmp_path, capsys, lines, message):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = write_config(tmp_path, data=str(data), extra=RANDOM_INIT)
    assert run_main(main, ["--config", str(config)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resumed_run_logs_the_losses_of_an_uninterrupted_one(tmp_path, base_checkpoint, monkeypatch, lora):
    """Interrupted after its step-3 checkpoint and resumed with --resume, a run must continue exactly
    where it was: same rows drawn, same optimizer state, same losses (bit-exact on CPU)."""
    extra = "[lora]\nr = 2\ndropout = 0.1" if lora else RANDOM_INIT  # dropout: the RNG state must come back too
    init = str(base_checkpoint) if lora else ""

    def run_dir(name: str):
        folder = tmp_path / name
        folder.mkdir()
        return write_config(folder, init=init, n=60, steps=6, extra=extra)

    whole = run_dir("whole")
    assert run_main(main, ["--config", str(whole), "checkpoint.interval=3"]) == 0
    expected = [r["loss"] for r in read_metrics(tmp_path / "whole" / "run" / "metrics.jsonl") if "loss" in r]

    staged = run_dir("staged")
    calls = {"n": 0}

    def crash_after_three_steps(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("interrupted")
        return train_step(*args, **kwargs)

    monkeypatch.setattr(posttrain_run, "train_step", crash_after_three_steps)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_sft(staged, ["checkpoint.interval=3"])
    monkeypatch.setattr(posttrain_run, "train_step", train_step)
    assert run_main(main, ["--config", str(staged), "checkpoint.interval=3", "--resume"]) == 0
    resumed = [r["loss"] for r in read_metrics(tmp_path / "staged" / "run" / "metrics.jsonl") if "loss" in r]
    assert len(expected) == 6 and resumed == expected
    if lora:  # the adapters, not the merged weights, were resumed: both runs end with the same model
        a, _, _ = load_model(tmp_path / "whole" / "run")
        b, _, _ = load_model(tmp_path / "staged" / "run")
        assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_running_out_of_time_logs_the_last_step(tmp_path):
    """train.max_minutes ends the run between log lines: its last step is logged all the same, then
    validated and checkpointed (the shared loop does what pretraining does)."""
    config = write_config(tmp_path, n=60, steps=50, extra=RANDOM_INIT)
    last = train_sft(config, ["train.max_minutes=1e-6", "train.log_interval=10"])  # any step takes longer
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1] and last["step"] == 1
    assert [r["step"] for r in records if "val_loss" in r] == [1]
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_0000001"]


def test_eval_iters_zero_switches_validation_off(tmp_path):
    config = write_config(tmp_path, n=60, steps=2, extra=RANDOM_INIT)
    last = train_sft(config, ["eval.iters=0", "eval.interval=1"])
    assert last["step"] == 2 and "val_loss" not in last
    assert not [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]


def test_a_new_run_replaces_an_earlier_runs_checkpoints(tmp_path, capsys):
    config = write_config(tmp_path, n=60, steps=4, extra=RANDOM_INIT)
    assert run_main(main, ["--config", str(config), "checkpoint.interval=2"]) == 0
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_0000002", "step_0000004"]
    capsys.readouterr()
    assert run_main(main, ["--config", str(config), "train.max_steps=1"]) == 0
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_0000001"]
    assert (tmp_path / "run" / "latest").read_text().strip() == "step_0000001"
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r] == [1]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda state: state.update(dpo=state.pop("sft")), "was not written by SFT"),
        (lambda state: state.update(tokenizer_fingerprint="0" * 16), "written with a different tokenizer"),
    ],
)
def test_resume_refuses_a_checkpoint_this_run_cannot_continue(tmp_path, capsys, edit, message):
    config = write_config(tmp_path, n=40, steps=1, extra=RANDOM_INIT)
    assert run_main(main, ["--config", str(config)]) == 0
    capsys.readouterr()
    state_file = tmp_path / "run" / "step_0000001" / "state.json"
    state = json.loads(state_file.read_text())
    edit(state)
    state_file.write_text(json.dumps(state))
    assert run_main(main, ["--config", str(config), "--resume", "train.max_steps=2"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
