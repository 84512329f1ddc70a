"""Weight-only quantization of the Linear layers: int8 per output channel, int4 in groups.

    quantize_model(model, bits=4, group_size=64)     # in place; returns the names it replaced
    save_quantized(model, "out/", tokenizer)          # model.safetensors (+ tokenizer.json)
    model, tokenizer = load_quantized("out/")

Both schemes are round-to-nearest, the baseline of the post-training quantization literature (e.g.
GPTQ, Frantar et al. 2022, compares against it), with no calibration data:

- int8: each output row r gets one scale s_r = max|W_r| / 127, and q = round(W / s_r) in [-127, 127]
  (symmetric absmax, as in LLM.int8(), Dettmers et al. 2022, without its outlier decomposition).
- int4: each row is cut into groups of `group_size` inputs; a group with range [lo, hi] gets
  s = (hi - lo) / 15 and q = round((W - lo) / s) in [0, 15] (asymmetric min-max), two q per byte.
  Small groups follow the weights' local range, so 4 bits lose far less than one scale per row would.
  Scales and offsets are stored as float16 (for int8 the one scale per row stays float32: it costs
  nothing and avoids float16 underflow for rows of tiny weights).

Activations stay in floating point: `QuantizedLinear.forward` dequantizes its weight and runs an
ordinary matmul. That saves memory and disk; it does not make a CPU matmul faster (that needs fused
low-bit kernels), which the benchmark (benchmarks/quantize.py) shows. Embeddings, norms and the output
head stay unquantized: the head is usually tied to the embedding table, and it is the layer whose
rounding costs the most perplexity.

CLI: `python -m reference_llm.deploy.quantize --checkpoint DIR --bits 4 --group-size 64 --out DIR`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from reference_llm.cli import ArgumentParser
from reference_llm.errors import CheckpointError, ConfigError
from reference_llm.model import ModelConfig, Transformer

MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
BITS = (8, 4)


class QuantizedLinear(nn.Module):
    """A Linear layer whose weight is stored as int8, or as int4 packed two per uint8, plus scales."""

    def __init__(self, in_features: int, out_features: int, bias: bool, bits: int, group_size: int = 64) -> None:
        super().__init__()
        _check_scheme(bits, group_size, in_features)
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scales", torch.ones(out_features, 1))
            self.offsets = None
        else:
            groups = in_features // group_size
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
            self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16))
            self.register_buffer("offsets", torch.zeros(out_features, groups, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int = 64) -> QuantizedLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, bits, group_size)
        q.to(linear.weight.device)
        w = linear.weight.detach().float()  # (out, in)
        if bits == 8:
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127  # all-zero row: any scale works
            q.qweight.copy_(torch.round(w / scale).clamp(-127, 127).to(torch.int8))
            q.scales.copy_(scale)
        else:
            g = w.view(w.shape[0], -1, group_size)  # (out, groups, group_size)
            lo, hi = g.amin(dim=-1), g.amax(dim=-1)
            # Round the stored scale/offset to float16 first, so the codes are chosen for the values
            # that dequantization will actually use.
            scale = ((hi - lo) / 15).clamp(min=1e-8).half()
            lo = lo.half()
            codes = torch.round((g - lo.float()[..., None]) / scale.float()[..., None]).clamp(0, 15).to(torch.uint8)
            codes = codes.view(w.shape)
            q.qweight.copy_(codes[:, 0::2] | (codes[:, 1::2] << 4))  # even columns low nibble, odd high
            q.scales.copy_(scale)
            q.offsets.copy_(lo)
        if linear.bias is not None:
            q.bias.data.copy_(linear.bias.detach())
        return q

    def dequantize(self) -> torch.Tensor:
        """The float32 weight (out, in) this layer computes with."""
        if self.bits == 8:
            return self.qweight.float() * self.scales
        codes = torch.stack([self.qweight & 0xF, self.qweight >> 4], dim=-1).view(self.out_features, -1)
        g = codes.view(self.out_features, -1, self.group_size).float()
        w = g * self.scales.float()[..., None] + self.offsets.float()[..., None]
        return w.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize().to(x.dtype), bias)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}"


def _check_scheme(bits: int, group_size: int, in_features: int, name: str = "layer") -> None:
    if bits not in BITS:
        raise ConfigError(f"bits must be one of {', '.join(map(str, BITS))}, got {bits!r}")
    if bits == 4 and (group_size < 2 or group_size % 2 or in_features % group_size):
        raise ConfigError(f"int4 group_size must be even and divide the input size {in_features} of {name}; "
                          f"got {group_size} (try 32, 64 or 128)")


def quantizable_layers(model: Transformer) -> list[str]:
    """Names of the Linear layers `quantize_model` replaces: every one inside the blocks."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.startswith("blocks.")]


def quantize_model(model: Transformer, bits: int, group_size: int = 64) -> list[str]:
    """Replace the blocks' Linear layers with `QuantizedLinear` (in place); returns their names."""
    names = quantizable_layers(model)
    for name in names:  # check every layer before changing any, so a bad group size leaves the model intact
        _check_scheme(bits, group_size, model.get_submodule(name).in_features, name)
    for name in names:
        _replace(model, name, QuantizedLinear.from_linear(model.get_submodule(name), bits, group_size))
    return names


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def save_quantized(model: Transformer, out_dir: str | Path, tokenizer=None) -> Path:
    """Write a quantized model as `out_dir/model.safetensors` (config and scheme in its metadata),
    plus `tokenizer.json` when a tokenizer is given. Returns the weights file."""
    scheme = _scheme_of(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    if model.config.tie_embeddings:
        tensors.pop("lm_head.weight")  # the same storage as tok_emb.weight; safetensors refuses shared tensors
    metadata = {"format": "pt", "model_config": json.dumps(model.config.to_dict()), "quantization": json.dumps(scheme)}
    path = out / MODEL_FILE
    save_file(tensors, str(path), metadata=metadata)
    if tokenizer is not None:
        tokenizer.save(out / TOKENIZER_FILE)
    return path


def load_quantized(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Any]:
    """(model, tokenizer or None) from a directory written by `save_quantized`."""
    directory = Path(path)
    weights_path = directory / MODEL_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} not found: expected a directory written by save_quantized")
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        config = ModelConfig.from_dict(json.loads(metadata["model_config"]))
        scheme = json.loads(metadata["quantization"])
        bits, group_size, layers = int(scheme["bits"]), int(scheme["group_size"]), list(scheme["layers"])
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{weights_path} is not a quantized model ({exc!r})") from None
    model = Transformer(config)
    if sorted(layers) != sorted(quantizable_layers(model)):
        raise CheckpointError(f"{weights_path}: quantized layers do not match the model its config describes")
    for name in layers:  # empty quantized layers of the right shapes; the values come from the file
        linear = model.get_submodule(name)
        _check_scheme(bits, group_size, linear.in_features, name)
        _replace(model, name, QuantizedLinear(linear.in_features, linear.out_features, linear.bias is not None,
                                              bits, group_size))
    if config.tie_embeddings:
        tensors["lm_head.weight"] = tensors.get("tok_emb.weight")
    expected = model.state_dict()
    problems = sorted(set(expected) ^ set(tensors))
    problems += [n for n in expected if n in tensors and tensors[n].shape != expected[n].shape]
    if problems:
        raise CheckpointError(f"{weights_path} does not match its own config: {', '.join(problems[:5])}")
    model.load_state_dict(tensors)
    tokenizer = None
    if (directory / TOKENIZER_FILE).is_file():
        from reference_llm.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(directory / TOKENIZER_FILE)
    return model.to(device).eval(), tokenizer


def _scheme_of(model: Transformer) -> dict:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    if not layers:
        raise ConfigError("the model has no quantized layers; call quantize_model first")
    first = next(iter(layers.values()))
    return {"bits": first.bits, "group_size": first.group_size, "layers": sorted(layers)}


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m reference_llm.deploy.quantize",
                                     description="Quantize a checkpoint's Linear layers to int8 or int4.")
    parser.add_argument("--checkpoint", required=True, help="a step directory or a run directory")
    parser.add_argument("--bits", type=int, choices=BITS, default=8)
    parser.add_argument("--group-size", type=int, default=64, help="inputs per int4 scale (default 64)")
    parser.add_argument("--out", required=True, help="directory to write model.safetensors and tokenizer.json")
    args = parser.parse_args(argv)
    from reference_llm.train.checkpoint import load_model

    model, tokenizer, _ = load_model(args.checkpoint, "cpu")
    names = quantize_model(model, args.bits, args.group_size)
    path = save_quantized(model, args.out, tokenizer)
    print(f"quantized {len(names)} layers to int{args.bits}: {path} ({path.stat().st_size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
