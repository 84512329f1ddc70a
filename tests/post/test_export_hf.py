"""Export to / import from the Hugging Face layout: transformers loads it offline and its logits match."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reference_llm.assets import corpus_path
from reference_llm.deploy.export import export_hf, hf_names, import_hf
from reference_llm.deploy.quantize import quantize_model
from reference_llm.errors import CheckpointError, ConfigError
from reference_llm.model import ModelConfig, Transformer
from reference_llm.tokenizer import EOT, train_tokenizer
from reference_llm.tokenizer.chat import CHAT_TOKENS, encode_prompt
from reference_llm.train.checkpoint import save_model, unique_state_dict

transformers = pytest.importorskip("transformers", reason="the 'hf' extra (transformers) is not installed")

ROOT = Path(__file__).resolve().parents[2]
TEXT = corpus_path().read_text(encoding="utf-8")[:30_000]
VARIANTS = {
    "gpt2": ("gpt2", {}),
    "gpt2-nobias-untied": ("gpt2", dict(bias=False, tie_embeddings=False)),
    "llama-gqa": ("llama", dict(n_kv_head=2)),
    "llama-bias-tied": ("llama", dict(bias=True, tie_embeddings=True, rope_theta=500000.0)),
}


@pytest.fixture(scope="module")
def char_tokenizer():
    return train_tokenizer("char", [TEXT], None, special_tokens=(EOT, *CHAT_TOKENS))


@pytest.fixture(scope="module")
def bpe_tokenizer():
    return train_tokenizer("bpe", [TEXT], 300, special_tokens=(EOT, *CHAT_TOKENS))


def random_model(arch: str, vocab_size: int, seed: int = 0, **fields) -> Transformer:
    """A small model with weights far from their initialisation (larger, non-zero biases and norm
    weights), so that a wrong mapping of any tensor shows in the logits."""
    torch.manual_seed(seed)
    config = ModelConfig.for_arch(arch, vocab_size=vocab_size, block_size=96, n_layer=2, n_head=4, d_model=64, **fields)
    model = Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def hf_model(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_loads_the_export_and_its_logits_match(tmp_path: Path, char_tokenizer, variant: str) -> None:
    arch, fields = VARIANTS[variant]
    model = random_model(arch, char_tokenizer.vocab_size, **fields)
    export_hf(model, char_tokenizer, tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    theirs = hf_model(tmp_path)
    assert type(theirs).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[arch]
    ids = torch.tensor([char_tokenizer.encode(TEXT[1000:1096]), char_tokenizer.encode(TEXT[5000:5096])])
    with torch.no_grad():
        ours, hf_logits = model(ids)[0], theirs(ids).logits
    assert ours.abs().max() > 1.0  # the logits vary: a real comparison
    assert (ours - hf_logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_one_name_table_names_every_tensor_of_both_models_once(
    tmp_path: Path, char_tokenizer, variant: str
) -> None:
    arch, fields = VARIANTS[variant]
    model = random_model(arch, char_tokenizer.vocab_size, **fields)
    links = hf_names(model.config)
    ours = [link.ours for link in links if link.ours is not None]
    theirs = [name for link in links for name in link.hf]
    assert sorted(ours) == sorted(unique_state_dict(model))
    export_hf(model, None, tmp_path)
    hf_tensors = set(hf_model(tmp_path).state_dict()) - ({"lm_head.weight"} if model.config.tie_embeddings else set())
    assert len(theirs) == len(set(theirs)) and set(theirs) == hf_tensors


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_import_restores_the_same_model(tmp_path: Path, char_tokenizer, variant: str) -> None:
    arch, fields = VARIANTS[variant]
    model = random_model(arch, char_tokenizer.vocab_size, **fields)
    export_hf(model, char_tokenizer, tmp_path)
    back, tokenizer = import_hf(tmp_path)
    assert back.config == model.config
    ids = torch.tensor([char_tokenizer.encode(TEXT[:64])])
    assert torch.equal(back(ids)[0], model(ids)[0])
    assert tokenizer.encode(TEXT[:500]) == char_tokenizer.encode(TEXT[:500])


def test_import_of_a_model_saved_by_transformers_itself(tmp_path: Path) -> None:
    config = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 20000.0},
    )
    torch.manual_seed(0)
    theirs = transformers.LlamaForCausalLM(config).eval()
    theirs.save_pretrained(tmp_path)
    ours, tokenizer = import_hf(tmp_path)
    assert tokenizer is None and ours.config.n_kv_head == 1 and ours.config.rope_theta == 20000.0
    ids = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        assert (ours(ids)[0] - theirs(ids).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_hf_tokenizer_encodes_decodes_and_applies_the_chat_template_like_ours(
    tmp_path: Path, kind: str, char_tokenizer, bpe_tokenizer
) -> None:
    tokenizer = {"char": char_tokenizer, "bpe": bpe_tokenizer}[kind]
    model = random_model("llama", tokenizer.vocab_size)
    export_hf(model, tokenizer, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    sample = TEXT[2000:3000] + EOT
    ids = tokenizer.encode(sample)
    assert theirs(sample)["input_ids"] == ids
    assert theirs.decode(ids) == sample
    assert theirs.eos_token == EOT
    chat = [{"role": "system", "content": "Speak verse."}, {"role": "user", "content": "What light?"}]
    rendered = theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    rendered = rendered["input_ids"] if isinstance(rendered, dict) or hasattr(rendered, "keys") else rendered
    assert list(rendered) == encode_prompt(chat, tokenizer)


def test_bfloat16_export_loads(tmp_path: Path, char_tokenizer) -> None:
    model = random_model("llama", char_tokenizer.vocab_size)
    export_hf(model, char_tokenizer, tmp_path, dtype="bfloat16")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert theirs.dtype == torch.bfloat16
    ids = torch.tensor([char_tokenizer.encode(TEXT[:48])])
    with torch.no_grad():
        diff = (theirs.float()(ids).logits - model(ids)[0]).abs().max().item()
    assert diff < 0.5  # bf16 rounding of the weights only


def test_unsupported_architectures_are_refused_with_the_reason(tmp_path: Path, char_tokenizer) -> None:
    custom = Transformer(
        ModelConfig.gpt2_style(vocab_size=64, block_size=32, n_layer=1, n_head=2, d_model=32, mlp="swiglu")
    )
    with pytest.raises(ConfigError, match="custom mix; supported: gpt2"):
        export_hf(custom, None, tmp_path)
    gqa_gpt2 = Transformer(
        ModelConfig.gpt2_style(vocab_size=64, block_size=32, n_layer=1, n_head=4, n_kv_head=2, d_model=32)
    )
    with pytest.raises(ConfigError, match="no grouped-query attention"):
        export_hf(gqa_gpt2, None, tmp_path)
    quantized = random_model("llama", char_tokenizer.vocab_size)
    quantize_model(quantized, 8)
    with pytest.raises(ConfigError, match="quantized"):
        export_hf(quantized, None, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_import_refuses_what_it_cannot_represent(tmp_path: Path, char_tokenizer) -> None:
    model = random_model("gpt2", char_tokenizer.vocab_size)
    export_hf(model, None, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())

    def write(**changes):
        (tmp_path / "config.json").write_text(json.dumps({**config, **changes}))

    write(model_type="bert")
    with pytest.raises(ConfigError, match="model_type 'bert' cannot be imported; supported: gpt2, llama"):
        import_hf(tmp_path)
    write(activation_function="relu")
    with pytest.raises(ConfigError, match="activation_function='relu' is not supported"):
        import_hf(tmp_path)
    write(n_layer=3)  # config and weights disagree
    with pytest.raises(CheckpointError, match="transformer.h.2.ln_1.weight' is missing"):
        import_hf(tmp_path)
    write(n_embd=32)
    with pytest.raises(CheckpointError, match="shape"):
        import_hf(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    write()
    with pytest.raises(CheckpointError, match="pickle files are never loaded"):
        import_hf(tmp_path)


def test_cli_exports_and_imports_a_checkpoint(tmp_path: Path, char_tokenizer) -> None:
    model = random_model("llama", char_tokenizer.vocab_size)
    save_model(model, char_tokenizer, tmp_path / "run")
    run = [sys.executable, "-m", "reference_llm.deploy.export"]
    done = subprocess.run(
        run + ["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "hf")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "LlamaForCausalLM" in done.stdout
    done = subprocess.run(
        run + ["--import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    from reference_llm.train.checkpoint import load_model

    back, tokenizer, _ = load_model(tmp_path / "back")
    ids = torch.tensor([char_tokenizer.encode(TEXT[:32])])
    assert torch.equal(back(ids)[0], model(ids)[0])


def test_cli_refuses_a_custom_architecture_in_one_line(tmp_path: Path, char_tokenizer, capsys) -> None:
    from reference_llm.cli import run_main
    from reference_llm.deploy.export import main

    custom = Transformer(
        ModelConfig.llama_style(
            vocab_size=char_tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=32, mlp="gelu"
        )
    )
    save_model(custom, char_tokenizer, tmp_path / "custom")
    code = run_main(main, ["--checkpoint", str(tmp_path / "custom"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot export to Hugging Face") and err.count("\n") == 1
    assert "position=rope, mlp=gelu" in err
