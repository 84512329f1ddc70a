"""Weight-only int8 / int4 / NF4 / MXFP4 quantization: code tables, rounding error bounds, packing,
save/load, model outputs and perplexity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from reference_llm.assets import corpus_path
from reference_llm.deploy.quantize import (
    E2M1_VALUES,
    NF4_SCALE_BLOCK,
    NF4_VALUES,
    QuantizedLinear,
    load_quantized,
    quantizable_layers,
    quantize_model,
    save_quantized,
)
from reference_llm.errors import CheckpointError, ConfigError
from reference_llm.evaluate.perplexity import evaluate_text
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
    errors = [
        (QuantizedLinear.from_linear(layer, 4, g).dequantize() - layer.weight).pow(2).mean().item()
        for g in (128, 64, 32)
    ]
    assert errors[0] > errors[1] > errors[2]
    int8 = (QuantizedLinear.from_linear(layer, 8).dequantize() - layer.weight).pow(2).mean().item()
    assert int8 < errors[2]


def test_forward_is_a_linear_layer_with_the_dequantized_weight() -> None:
    layer = linear()
    q = QuantizedLinear.from_linear(layer, bits=4, group_size=32)
    x = torch.randn(3, 5, 128)
    assert torch.allclose(q(x), nn.functional.linear(x, q.dequantize(), layer.bias), atol=1e-5)
    assert torch.allclose(q(x), layer(x), atol=0.5)  # close to the original, not equal


# ----------------------------------------------------------------------------------------------------
# 4-bit float formats: NF4 (QLoRA) and MXFP4 (OCP Microscaling)
# ----------------------------------------------------------------------------------------------------

# NF4 as published with QLoRA (Dettmers et al. 2023, appendix E; bitsandbytes' NF4 code book).
PUBLISHED_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]
# FP4 E2M1 as the OCP MX spec v1.0 lists it (section 5.3.3): codes 0b0000..0b0111, then the same negated.
SPEC_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def half_gap(ratio: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Half the width of the interval of the ascending code `values` that holds each ratio (clamped to
    the codes' range): the most that rounding to the nearest code can move a value inside it."""
    ratio = ratio.clamp(values[0], values[-1])
    upper = torch.bucketize(ratio, values).clamp(1, len(values) - 1)
    return (values[upper] - values[upper - 1]) / 2


def test_nf4_code_values_equal_the_published_table() -> None:
    # nf4_values derives them from normal quantiles; the published ones are float32 roundings of the same
    assert torch.allclose(NF4_VALUES, torch.tensor(PUBLISHED_NF4), atol=5e-7, rtol=0)
    assert NF4_VALUES[7] == 0 and NF4_VALUES[0] == -1 and NF4_VALUES[-1] == 1  # exact zero and ends


def test_e2m1_code_values_equal_the_spec() -> None:
    assert E2M1_VALUES[:8].tolist() == SPEC_E2M1
    assert (-E2M1_VALUES[8:]).tolist() == SPEC_E2M1  # the sign bit is bit 3 (code 8 is -0)


@pytest.mark.parametrize("group_size", [32, 64])
def test_nf4_error_is_within_half_a_code_gap_of_its_double_quantized_scale(group_size: int) -> None:
    layer = linear(256, 24)
    w = layer.weight.detach()
    q = QuantizedLinear.from_linear(layer, 4, group_size, "nf4")
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (24, 128)
    assert q.scales.dtype == torch.int8 and q.scales.shape == (24, 256 // group_size)  # 8-bit scales
    # Second level: absmax minus its mean, in int8 with one scale per 256 scales, moves each by <= half a step.
    absmax = w.view(24, -1, group_size).abs().amax(-1)
    stored = q.absmax()
    centred = (absmax - absmax.mean()).flatten()
    step = torch.stack([b.abs().max() / 127 for b in centred.split(NF4_SCALE_BLOCK)])
    step = step.repeat_interleave(NF4_SCALE_BLOCK)[: centred.numel()].view(absmax.shape)
    assert torch.all((stored - absmax).abs() <= step / 2 + 1e-6)
    # First level: the nearest code of w / stored, so the error is half the gap between the two codes
    # around it, times the stored scale, plus what lies beyond the stored scale (when it came out smaller).
    groups, s = w.view(24, -1, group_size), stored[..., None]
    bound = s.abs() * half_gap(groups / s, NF4_VALUES) + (groups.abs() - s.abs()).clamp(min=0)
    error = (q.dequantize() - w).abs().view(24, -1, group_size)
    assert torch.all(error <= bound + 1e-6)
    assert error.max() > 0.5 * bound.max()  # the bound is tight, not vacuous


def test_mxfp4_scales_are_powers_of_two_and_errors_within_half_an_e2m1_gap() -> None:
    layer = linear(128, 24)
    w = layer.weight.detach()
    q = QuantizedLinear.from_linear(layer, 4, 32, "mxfp4")
    assert q.scales.dtype == torch.uint8 and q.scales.shape == (24, 4)  # one E8M0 exponent per 32 weights
    scale = torch.exp2(q.scales.float() - 127)[..., None]  # E8M0: 2^(e - 127)
    groups = w.view(24, 4, 32)
    top = groups.abs().amax(-1, keepdim=True) / scale
    assert torch.all((top >= 4) & (top < 8))  # shared exponent floor(log2 max) - emax(E2M1 = 2)
    # Inside [-6, 6] rounding moves a value by at most half the E2M1 gap around it; beyond, it saturates at 6.
    ratio = groups / scale
    bound = scale * (half_gap(ratio.abs(), E2M1_VALUES[:8]) + (ratio.abs() - 6).clamp(min=0))
    error = (q.dequantize() - w).abs().view(24, 4, 32)
    assert torch.all(error <= bound + 1e-7)
    assert torch.all(error <= 2 * scale)  # so never more than 2 scales: max|W| / 2 at worst


def test_mxfp4_rounds_ties_to_an_even_mantissa() -> None:
    layer = nn.Linear(32, 1, bias=False)
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 4.0]  # the midpoints between E2M1 neighbours, and 4 = max
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(ties * 4).view(1, 32))  # max 5 -> scale 2^(2 - 2) = 1
    q = QuantizedLinear.from_linear(layer, 4, 32, "mxfp4")
    assert q.dequantize()[0, :8].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 4.0]


def test_nf4_beats_int4_on_normal_weights_per_bit_but_not_on_uniform_ones() -> None:
    """NF4's codes are normal quantiles: on normally distributed weights it is more accurate than int4's
    evenly spaced levels for fewer bits per weight (group 32: 4 + 8/32 bits against int4 g64's 4 + 32/64);
    on uniform weights, where even spacing is right, int4 wins. Relative mean squared errors."""

    def relative_mse(layer: nn.Linear, group_size: int, fmt: str) -> float:
        q = QuantizedLinear.from_linear(layer, 4, group_size, fmt)
        return ((q.dequantize() - layer.weight).pow(2).mean() / layer.weight.pow(2).mean()).item()

    torch.manual_seed(0)
    normal, uniform = nn.Linear(512, 256), nn.Linear(512, 256)
    with torch.no_grad():
        normal.weight.normal_()
        uniform.weight.uniform_(-1, 1)
    assert relative_mse(normal, 32, "nf4") < 0.97 * relative_mse(normal, 64, "int")
    assert relative_mse(uniform, 32, "nf4") > 1.5 * relative_mse(uniform, 32, "int")


@pytest.fixture(scope="module")
def trained() -> tuple[Transformer, object, str]:
    """The tiny preset trained briefly on the start of the corpus (a character model), and held-out text:
    trained weights, unlike random ones, are what quantization error in perplexity depends on."""
    text = corpus_path().read_text(encoding="utf-8")[:20_000]
    tokenizer = train_tokenizer("char", [text], None)
    data = torch.tensor(tokenizer.encode(text[:-2000]))
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    T = model.config.block_size
    for _ in range(150):
        starts = torch.randint(0, len(data) - T - 1, (16,))
        x = torch.stack([data[s : s + T] for s in starts])
        _, loss = model(x, torch.stack([data[s + 1 : s + T + 1] for s in starts]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer, text[-2000:]


def test_4bit_formats_keep_perplexity_close_to_float32(trained, monkeypatch) -> None:
    model, tokenizer, heldout = trained
    base = evaluate_text(model, tokenizer, heldout).perplexity
    assert base < 0.25 * tokenizer.vocab_size  # it learned something: far below the uniform guess

    def change(group_size: int, fmt: str) -> float:
        candidate = Transformer(model.config)
        candidate.load_state_dict(model.state_dict())
        quantize_model(candidate.eval(), 4, group_size, fmt)
        return evaluate_text(candidate, tokenizer, heldout).perplexity / base - 1

    changes = {fmt: change(group_size, fmt) for group_size, fmt in ((64, "int"), (64, "nf4"), (32, "mxfp4"))}
    assert all(abs(c) < 0.02 for c in changes.values()), changes
    # Control: the same check fails for 2 bits per weight (NF4's slot with 4 evenly spaced code values).
    monkeypatch.setattr("reference_llm.deploy.quantize.NF4_VALUES", torch.linspace(-1, 1, 4).repeat_interleave(4))
    assert change(64, "nf4") > 0.02


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
@pytest.mark.parametrize("bits, fmt", [(8, "int"), (4, "int"), (4, "nf4"), (4, "mxfp4")])
def test_quantized_model_stays_close_and_round_trips_through_safetensors(
    tmp_path: Path, preset: str, bits: int, fmt: str
) -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset(preset)).eval()
    x = torch.randint(0, model.config.vocab_size, (2, 24))
    reference = model(x)[0]
    names = quantize_model(model, bits, group_size=32, fmt=fmt)
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


@pytest.mark.parametrize("fmt", ["int", "nf4", "mxfp4"])
def test_loaded_4bit_model_generates_what_the_quantized_model_does(tmp_path: Path, fmt: str) -> None:
    from reference_llm.deploy.generate import generate

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny")).eval()
    quantize_model(model, 4, 32, fmt)
    save_quantized(model, tmp_path)
    loaded, _ = load_quantized(tmp_path)
    out = generate(loaded, [[1, 2, 3]], max_new_tokens=5, temperature=0.0)
    assert len(out[0]) == 5
    assert out == generate(model, [[1, 2, 3]], max_new_tokens=5, temperature=0.0)


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
    cmd = [
        sys.executable,
        "-m",
        "reference_llm.deploy.quantize",
        "--checkpoint",
        str(tmp_path / "run"),
        "--bits",
        "4",
        "--group-size",
        "32",
        "--out",
        str(tmp_path / "q"),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded, loaded_tokenizer = load_quantized(tmp_path / "q")
    assert loaded_tokenizer.encode(text) == tokenizer.encode(text)
    assert sum(isinstance(m, QuantizedLinear) for m in loaded.modules()) == 8


def test_cli_bad_group_size_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from reference_llm.cli import run_main
    from reference_llm.deploy.quantize import main

    tokenizer = train_tokenizer("char", ["abc"], None)
    save_model(Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)), tokenizer, tmp_path / "run")
    code = run_main(
        main, ["--checkpoint", str(tmp_path / "run"), "--bits", "4", "--group-size", "48", "--out", str(tmp_path / "q")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: int4 group_size") and err.count("\n") == 1
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("fmt", ["nf4", "mxfp4"])
def test_cli_writes_float_formats_that_load(tmp_path: Path, capsys, fmt: str) -> None:
    from reference_llm.cli import run_main
    from reference_llm.deploy.quantize import main

    tokenizer = train_tokenizer("char", ["abcdefgh"], None)
    save_model(Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)), tokenizer, tmp_path / "run")
    code = run_main(main, ["--checkpoint", str(tmp_path / "run"), "--format", fmt, "--out", str(tmp_path / "q")])
    assert code == 0 and f"layers to {fmt}:" in capsys.readouterr().out
    loaded, _ = load_quantized(tmp_path / "q")
    layers = [m for m in loaded.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 8 and all(m.fmt == fmt and m.group_size == {"nf4": 64, "mxfp4": 32}[fmt] for m in layers)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "nf4", "--bits", "8"], "error: nf4 is a 4-bit format; bits must be 4"),
        (["--format", "mxfp4", "--group-size", "64"], "error: mxfp4 blocks are 32 weights"),
    ],
)
def test_cli_refuses_a_float_format_it_cannot_write(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    from reference_llm.cli import run_main
    from reference_llm.deploy.quantize import main

    tokenizer = train_tokenizer("char", ["abc"], None)
    save_model(Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)), tokenizer, tmp_path / "run")
    code = run_main(main, ["--checkpoint", str(tmp_path / "run"), *args, "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "q").exists()
