"""Weight-only int8 / int4 quantization: rounding error bounds, packing, save/load, model outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from reference_llm.deploy.quantize import (
    QuantizedLinear,
    load_quantized,
    quantizable_layers,
    quantize_model,
    save_quantized,
)
from reference_llm.errors import CheckpointError, ConfigError
from reference_llm.model import ModelConfig, Transformer
from reference_llm.tokenizer import train_tokenizer
from reference_llm.train.checkpoint import save_model

ROOT = Path(__file__).resolve().parents[2]


def linear(in_features: int = 128, out_features: int = 24, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.1, 5.0, out_features)[:, None])  # rows of very different range
    return layer


def test_int8_error_is_at_most_half_a_step_per_row() -> None:
    layer = linear()
    q = QuantizedLinear.from_linear(layer, bits=8)
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == layer.weight.shape
    step = layer.weight.abs().amax(dim=1, keepdim=True) / 127
    error = (q.dequantize() - layer.weight).abs()
    assert torch.all(error <= step / 2 + 1e-7)
    # the largest weight of each row is representable exactly (it defines the scale)
    rows = torch.arange(layer.out_features)
    top = layer.weight.abs().argmax(dim=1)
    assert torch.allclose(q.dequantize()[rows, top], layer.weight[rows, top], atol=1e-6)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_packs_two_codes_per_byte_within_half_a_group_step(group_size: int) -> None:
    layer = linear()
    q = QuantizedLinear.from_linear(layer, bits=4, group_size=group_size)
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (24, 64)  # 128 inputs -> 64 bytes per row
    assert q.scales.shape == (24, 128 // group_size)
    groups = layer.weight.detach().view(24, -1, group_size)
    step = (groups.amax(-1) - groups.amin(-1)) / 15  # (out, groups)
    error = (q.dequantize() - layer.weight).abs().view(24, -1, group_size)
    # half a step, plus float16 rounding of the stored scale and offset
    assert torch.all(error <= step[..., None] * 0.5 + 2e-3 * groups.abs().amax(-1, keepdim=True))


def test_smaller_groups_are_more_accurate() -> None:
    layer = linear(256, 32)
    errors = [(QuantizedLinear.from_linear(layer, 4, g).dequantize() - layer.weight).pow(2).mean().item()
              for g in (128, 64, 32)]
    assert errors[0] > errors[1] > errors[2]
    int8 = (QuantizedLinear.from_linear(layer, 8).dequantize() - layer.weight).pow(2).mean().item()
    assert int8 < errors[2]


def test_forward_is_a_linear_layer_with_the_dequantized_weight() -> None:
    layer = linear()
    q = QuantizedLinear.from_linear(layer, bits=4, group_size=32)
    x = torch.randn(3, 5, 128)
    assert torch.allclose(q(x), nn.functional.linear(x, q.dequantize(), layer.bias), atol=1e-5)
    assert torch.allclose(q(x), layer(x), atol=0.5)  # close to the original, not equal


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_model_stays_close_and_round_trips_through_safetensors(tmp_path: Path, preset: str,
                                                                         bits: int) -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset(preset)).eval()
    x = torch.randint(0, model.config.vocab_size, (2, 24))
    reference = model(x)[0]
    names = quantize_model(model, bits, group_size=32)
    assert names == quantizable_layers(Transformer(model.config)) and len(names) == 4 * model.config.n_layer
    assert all(isinstance(model.get_submodule(n), QuantizedLinear) for n in names)
    assert isinstance(model.lm_head, nn.Linear) and isinstance(model.tok_emb, nn.Embedding)
    out = model(x)[0]
    relative = (out - reference).norm() / reference.norm()
    assert relative < (0.02 if bits == 8 else 0.2)

    path = save_quantized(model, tmp_path)
    loaded, tokenizer = load_quantized(tmp_path)
    assert tokenizer is None
    assert torch.equal(loaded(x)[0], out)
    full = sum(p.numel() * 4 for p in Transformer(model.config).parameters())
    assert path.stat().st_size < full


def test_quantized_model_generates(tmp_path: Path) -> None:
    from reference_llm.deploy.generate import generate

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny")).eval()
    quantize_model(model, 4, 32)
    out = generate(model, [[1, 2, 3]], max_new_tokens=5, temperature=0.0)
    assert len(out[0]) == 5


def test_bad_schemes_are_refused_before_any_change() -> None:
    model = Transformer(ModelConfig.preset("tiny"))
    with pytest.raises(ConfigError, match="bits must be one of 8, 4"):
        quantize_model(model, 3)
    with pytest.raises(ConfigError, match="group_size must be even and divide the input size 64"):
        quantize_model(model, 4, group_size=48)
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
    with pytest.raises(ConfigError, match="no quantized layers"):
        save_quantized(model, "unused")


def test_loading_a_file_that_does_not_match_its_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_quantized(tmp_path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not a quantized model"):
        load_quantized(tmp_path)


def test_cli_quantizes_a_checkpoint(tmp_path: Path) -> None:
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n"
    tokenizer = train_tokenizer("char", [text], None)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size))
    save_model(model, tokenizer, tmp_path / "run")
    cmd = [sys.executable, "-m", "reference_llm.deploy.quantize", "--checkpoint", str(tmp_path / "run"), "--bits", "4",
           "--group-size", "32", "--out", str(tmp_path / "q")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded, loaded_tokenizer = load_quantized(tmp_path / "q")
    assert loaded_tokenizer.encode(text) == tokenizer.encode(text)
    assert sum(isinstance(m, QuantizedLinear) for m in loaded.modules()) == 8



def test_cli_bad_group_size_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from reference_llm.cli import run_main
    from reference_llm.deploy.quantize import main

    tokenizer = train_tokenizer("char", ["abc"], None)
    save_model(Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)), tokenizer,
                       tmp_path / "run")
    code = run_main(main, ["--checkpoint", str(tmp_path / "run"), "--bits", "4", "--group-size", "48",
                           "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: int4 group_size") and err.count("\n") == 1
    assert not (tmp_path / "q").exists()
