"""Weight-only quantization of the Linear layers: int8 per output channel; int4, NF4 and MXFP4 in groups.

    quantize_model(model, bits=4, group_size=64)     # in place; returns the names it replaced
    quantize_model(model, 4, fmt="nf4")              # or fmt="mxfp4": the 4-bit float formats
    save_quantized(model, "out/", tokenizer)          # model.safetensors (+ tokenizer.json)
    model, tokenizer = load_quantized("out/")

Every scheme is round-to-nearest, the baseline of the post-training quantization literature (e.g.
GPTQ, Frantar et al. 2022, compares against it), with no calibration data:

- int8: each output row r gets one scale s_r = max|W_r| / 127, and q = round(W / s_r) in [-127, 127]
  (symmetric absmax, as in LLM.int8(), Dettmers et al. 2022, without its outlier decomposition).
- int4: each row is cut into groups of `group_size` inputs; a group with range [lo, hi] gets
  s = (hi - lo) / 15 and q = round((W - lo) / s) in [0, 15] (asymmetric min-max), two q per byte.
  Small groups follow the weights' local range, so 4 bits lose far less than one scale per row would.
  Scales and offsets are stored as float16 (for int8 the one scale per row stays float32: it costs
  nothing and avoids float16 underflow for rows of tiny weights).
- nf4 (QLoRA, Dettmers et al. 2023): the 16 code values are quantiles of a standard normal distribution
  scaled to [-1, 1] with an exact zero (`nf4_values`), since trained weights are roughly normal; a group
  of `group_size` (default 64) gets its absmax a as scale and each weight the nearest code of W / a.
  The scales are quantized again ("double quantization"): minus their mean, in blocks of 256, as 8-bit
  integers with one float32 scale per block, so they cost 8 bits per group instead of 32. QLoRA stores
  them with bitsandbytes' 8-bit dynamic float map; symmetric int8 is used here instead because its error,
  half a step of the block, bounds every scale by the same amount (tests/post/test_quantize.py).
- mxfp4 (OCP Microscaling Formats spec v1.0): blocks of 32 weights share one power-of-two scale stored as
  E8M0 (a biased 8-bit exponent); each weight is an FP4 E2M1 number (sign, 2 exponent and 1 mantissa
  bits: 0, 0.5, 1, 1.5, 2, 3, 4, 6) of W / scale, rounded to nearest even and saturated at 6. As the spec
  says, the shared exponent is floor(log2(max|W|)) - 2, so the largest weight of a block lands in [4, 8).

All 4-bit codes are stored two per byte. Activations stay in floating point: `QuantizedLinear.forward`
dequantizes its weight and runs an ordinary matmul. That saves memory and disk; it does not make a CPU
matmul faster (that needs fused low-bit kernels), which the benchmark (benchmarks/quantize.py) shows.
Embeddings, norms and the output head stay unquantized: the head is usually tied to the embedding table,
and it is the layer whose rounding costs the most perplexity.

CLI: `python -m reference_llm.deploy.quantize --checkpoint DIR --bits 4 --group-size 64 --out DIR`,
`--format nf4` or `--format mxfp4` for the float formats.
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
FORMATS = ("int", "nf4", "mxfp4")
DEFAULT_GROUP_SIZE = {"int": 64, "nf4": 64, "mxfp4": 32}  # int8 ignores it (one scale per row)
MX_BLOCK = 32  # elements per shared scale, fixed by the OCP MX spec
NF4_SCALE_BLOCK = 256  # first-level scales per second-level scale (QLoRA)
E8M0_BIAS = 127


def nf4_values() -> torch.Tensor:
    """QLoRA's 16 NF4 code values, ascending, from -1 to 1 with an exact 0.

    Quantiles of N(0, 1): 8 for the positive half and 7 for the negative half (so that 0 is a code),
    taken at evenly spaced probabilities from 0.5 to `offset` and normalised by the largest. The offset
    is the mean of 1 - 1/(2*15) and 1 - 1/(2*16), as in QLoRA's reference code, so that the outermost
    quantiles stay finite."""
    offset = 0.5 * ((1 - 1 / 30) + (1 - 1 / 32))
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (values / values.max()).float()


def e2m1_values() -> torch.Tensor:
    """The value of each 4-bit FP4 E2M1 code (index = bit pattern S EE M; exponent bias 1, code 0b1000
    is -0): the OCP MX spec's element format for MXFP4."""
    codes = torch.arange(16)
    sign = 1 - 2 * (codes >> 3)
    exponent, mantissa = (codes >> 1) & 3, (codes & 1).float()
    magnitude = torch.where(exponent == 0, mantissa / 2, 2.0 ** (exponent - 1) * (1 + mantissa / 2))
    return sign * magnitude


NF4_VALUES = nf4_values()
E2M1_VALUES = e2m1_values()


class QuantizedLinear(nn.Module):
    """A Linear layer whose weight is stored as int8, or as 4-bit codes packed two per uint8, plus scales."""

    # Buffers (which of them exist depends on the format), declared for the type checker.
    qweight: torch.Tensor
    scales: torch.Tensor
    scale_scales: torch.Tensor
    scale_mean: torch.Tensor
    offsets: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        bits: int,
        group_size: int | None = None,
        fmt: str = "int",
    ) -> None:
        super().__init__()
        group_size = group_size or DEFAULT_GROUP_SIZE.get(fmt, 64)
        _check_scheme(bits, group_size, in_features, fmt=fmt)
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        self.fmt = fmt
        groups = in_features // group_size
        self.register_buffer("offsets", None)  # int4 only; a None buffer is not in the state dict
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scales", torch.ones(out_features, 1))
        else:
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        if fmt == "int" and bits == 4:
            self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16))
            self.register_buffer("offsets", torch.zeros(out_features, groups, dtype=torch.float16))
        elif fmt == "nf4":
            self.register_buffer("scales", torch.zeros(out_features, groups, dtype=torch.int8))
            blocks = -(-out_features * groups // NF4_SCALE_BLOCK)
            self.register_buffer("scale_scales", torch.ones(blocks))
            self.register_buffer("scale_mean", torch.zeros(1))
        elif fmt == "mxfp4":
            self.register_buffer("scales", torch.full((out_features, groups), E8M0_BIAS, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, bits: int, group_size: int | None = None, fmt: str = "int"
    ) -> QuantizedLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, bits, group_size, fmt)
        q.to(linear.weight.device)
        w = linear.weight.detach().float()  # (out, in)
        g = w.view(w.shape[0], -1, q.group_size)  # (out, groups, group_size); int8 does not use it
        if bits == 8:
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127  # all-zero row: any scale works
            q.qweight.copy_(torch.round(w / scale).clamp(-127, 127).to(torch.int8))
            q.scales.copy_(scale)
        elif fmt == "int":
            lo, hi = g.amin(dim=-1), g.amax(dim=-1)
            # Round the stored scale/offset to float16 first, so the codes are chosen for the values
            # that dequantization will actually use.
            scale = ((hi - lo) / 15).clamp(min=1e-8).half()
            lo = lo.half()
            codes = torch.round((g - lo.float()[..., None]) / scale.float()[..., None]).clamp(0, 15)
            q.qweight.copy_(_pack(codes.to(torch.uint8).view(w.shape)))
            q.scales.copy_(scale)
            assert q.offsets is not None
            q.offsets.copy_(lo)
        elif fmt == "nf4":
            codes8, block_scales, mean = _double_quantize(g.abs().amax(dim=-1))
            q.scales.copy_(codes8)
            q.scale_scales.copy_(block_scales)
            q.scale_mean.copy_(mean)
            absmax = q.absmax()  # as dequantization will see it, for the same reason as int4's float16
            ratio = torch.where(absmax[..., None] != 0, g / absmax[..., None], torch.zeros_like(g))
            q.qweight.copy_(_pack(_nearest(ratio, NF4_VALUES.to(w.device)).view(w.shape)))
        else:  # mxfp4
            amax = g.abs().amax(dim=-1)
            exponent = torch.floor(torch.log2(amax)) - 2  # emax of E2M1 is 2: the block max lands in [4, 8)
            exponent = torch.where(amax > 0, exponent, torch.full_like(exponent, -E8M0_BIAS))
            exponent = exponent.clamp(-E8M0_BIAS, E8M0_BIAS)
            q.scales.copy_((exponent + E8M0_BIAS).to(torch.uint8))
            q.qweight.copy_(_pack(_e2m1_encode(g / torch.exp2(exponent)[..., None]).view(w.shape)))
        if linear.bias is not None:
            assert q.bias is not None
            q.bias.data.copy_(linear.bias.detach())
        return q

    def absmax(self) -> torch.Tensor:
        """NF4 only: each group's scale (out, groups) after double quantization, as float32."""
        flat = self.scales.flatten().float()
        padded = F.pad(flat, (0, self.scale_scales.numel() * NF4_SCALE_BLOCK - flat.numel()))
        blocks = padded.view(-1, NF4_SCALE_BLOCK) * self.scale_scales[:, None]
        return blocks.flatten()[: flat.numel()].view(self.scales.shape) + self.scale_mean

    def dequantize(self) -> torch.Tensor:
        """The float32 weight (out, in) this layer computes with."""
        if self.bits == 8:
            return self.qweight.float() * self.scales
        codes = _unpack(self.qweight).view(self.out_features, -1, self.group_size)
        if self.fmt == "int":
            assert self.offsets is not None
            w = codes.float() * self.scales.float()[..., None] + self.offsets.float()[..., None]
        elif self.fmt == "nf4":
            w = NF4_VALUES.to(codes.device)[codes.long()] * self.absmax()[..., None]
        else:
            scale = torch.exp2(self.scales.float() - E8M0_BIAS)
            w = E2M1_VALUES.to(codes.device)[codes.long()] * scale[..., None]
        return w.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize().to(x.dtype), bias)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"{scheme_label(self.bits, self.fmt)}{group}"
        )


def scheme_label(bits: int, fmt: str = "int") -> str:
    """'int8', 'int4', 'nf4' or 'mxfp4'."""
    return f"int{bits}" if fmt == "int" else fmt


def _pack(codes: torch.Tensor) -> torch.Tensor:
    """(out, in) codes in [0, 15] -> (out, in / 2) bytes: even columns in the low nibble, odd in the high."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).view(packed.shape[0], -1)


def _nearest(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index (uint8) of the nearest of the ascending `values` for each element of x."""
    midpoints = (values[1:] + values[:-1]) / 2
    return torch.bucketize(x.contiguous(), midpoints).to(torch.uint8)


def _e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """E2M1 bit patterns (uint8) of x: round to nearest, ties to an even mantissa, saturate at +-6."""
    magnitudes = E2M1_VALUES[:8].to(x.device)  # codes 0..7 are the non-negative values, ascending
    midpoints = (magnitudes[1:] + magnitudes[:-1]) / 2
    index = torch.bucketize(x.abs().contiguous(), midpoints)  # a tie goes to the lower code...
    tie = x.abs() == midpoints[index.clamp(max=len(midpoints) - 1)]
    index = index + (tie & (index % 2 == 1)).long()  # ...unless its mantissa bit (the code's last bit) is 1
    return (index | ((x < 0).long() << 3)).to(torch.uint8)


def _double_quantize(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """QLoRA's second quantization of the NF4 scales: (int8 codes shaped like absmax, a float32 scale per
    block of 256 codes, the float32 mean that was subtracted). Scales are positive; centring them lets a
    symmetric code use all of its range."""
    flat = absmax.flatten()
    mean = flat.mean()
    blocks = -(-flat.numel() // NF4_SCALE_BLOCK)
    centred = F.pad(flat - mean, (0, blocks * NF4_SCALE_BLOCK - flat.numel())).view(blocks, NF4_SCALE_BLOCK)
    block_scales = centred.abs().amax(dim=1).clamp(min=1e-12) / 127  # all scales equal: any block scale works
    codes = torch.round(centred / block_scales[:, None]).clamp(-127, 127).to(torch.int8)
    return codes.flatten()[: flat.numel()].view(absmax.shape), block_scales, mean.reshape(1)


def _check_scheme(bits: int, group_size: int, in_features: int, name: str = "layer", fmt: str = "int") -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if bits not in BITS:
        raise ConfigError(f"bits must be one of {', '.join(map(str, BITS))}, got {bits!r}")
    if fmt != "int" and bits != 4:
        raise ConfigError(f"{fmt} is a 4-bit format; bits must be 4, got {bits}")
    if fmt == "mxfp4" and group_size != MX_BLOCK:
        raise ConfigError(
            f"mxfp4 blocks are {MX_BLOCK} weights (OCP MX spec); group_size must be {MX_BLOCK}, got {group_size}"
        )
    if bits == 4 and (group_size < 2 or group_size % 2 or in_features % group_size):
        raise ConfigError(
            f"{scheme_label(bits, fmt)} group_size must be even and divide the input size "
            f"{in_features} of {name}; got {group_size} (try 32, 64 or 128)"
        )


def quantizable_layers(model: Transformer) -> list[str]:
    """Names of the Linear layers `quantize_model` replaces: every one inside the blocks."""
    return [
        name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name.startswith("blocks.")
    ]


def quantize_model(model: Transformer, bits: int, group_size: int | None = None, fmt: str = "int") -> list[str]:
    """Replace the blocks' Linear layers with `QuantizedLinear` (in place); returns their names.
    `fmt`: "int" (int8 or int4), "nf4" or "mxfp4"; `group_size` defaults to 64 (32 for mxfp4)."""
    group_size = group_size or DEFAULT_GROUP_SIZE.get(fmt, 64)
    names = quantizable_layers(model)
    for name in names:  # check every layer before changing any, so a bad group size leaves the model intact
        _check_scheme(bits, group_size, _linear(model, name).in_features, name, fmt)
    for name in names:
        _replace(model, name, QuantizedLinear.from_linear(_linear(model, name), bits, group_size, fmt))
    return names


def _linear(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    assert isinstance(module, nn.Linear), name  # quantizable_layers names only Linear layers
    return module


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def save_quantized(model: Transformer, out_dir: str | Path, tokenizer: Any = None) -> Path:
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
        fmt = str(scheme.get("format", "int"))  # files from before the float formats have no "format"
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{weights_path} is not a quantized model ({exc!r})") from None
    model = Transformer(config)
    if sorted(layers) != sorted(quantizable_layers(model)):
        raise CheckpointError(f"{weights_path}: quantized layers do not match the model its config describes")
    for name in layers:  # empty quantized layers of the right shapes; the values come from the file
        linear = _linear(model, name)
        try:
            _check_scheme(bits, group_size, linear.in_features, name, fmt)
        except ConfigError as exc:
            raise CheckpointError(f"{weights_path}: {exc}") from None
        _replace(
            model,
            name,
            QuantizedLinear(linear.in_features, linear.out_features, linear.bias is not None, bits, group_size, fmt),
        )
    if config.tie_embeddings:
        tensors["lm_head.weight"] = tensors.get("tok_emb.weight")
    expected = model.state_dict()
    problems = sorted(set(expected) ^ set(tensors))
    problems += [
        n
        for n in expected
        if n in tensors and (tensors[n].shape != expected[n].shape or tensors[n].dtype != expected[n].dtype)
    ]
    if problems:
        raise CheckpointError(f"{weights_path} does not match its own config: {', '.join(problems[:5])}")
    model.load_state_dict(tensors)
    tokenizer = None
    if (directory / TOKENIZER_FILE).is_file():
        from reference_llm.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(directory / TOKENIZER_FILE)
    return model.to(device).eval(), tokenizer


def _scheme_of(model: Transformer) -> dict[str, Any]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    if not layers:
        raise ConfigError("the model has no quantized layers; call quantize_model first")
    first = next(iter(layers.values()))
    return {"bits": first.bits, "group_size": first.group_size, "format": first.fmt, "layers": sorted(layers)}


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="python -m reference_llm.deploy.quantize",
        description="Quantize a checkpoint's Linear layers to int8, int4, NF4 or MXFP4.",
    )
    parser.add_argument("--checkpoint", required=True, help="a step directory or a run directory")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="int",
        help="int (int8/int4), nf4 (QLoRA normal float) or mxfp4 (OCP microscaling); default int",
    )
    parser.add_argument(
        "--bits",
        type=int,
        choices=BITS,
        default=None,
        help="8 or 4 for --format int (default 8); nf4 and mxfp4 are 4-bit",
    )
    parser.add_argument(
        "--group-size", type=int, default=None, help="inputs per 4-bit scale (default 64; mxfp4: 32, fixed by its spec)"
    )
    parser.add_argument("--out", required=True, help="directory to write model.safetensors and tokenizer.json")
    args = parser.parse_args(argv)
    bits = args.bits or (8 if args.format == "int" else 4)
    from reference_llm.train.checkpoint import load_model

    model, tokenizer, _ = load_model(args.checkpoint, "cpu")
    names = quantize_model(model, bits, args.group_size, args.format)
    path = save_quantized(model, args.out, tokenizer)
    print(
        f"quantized {len(names)} layers to {scheme_label(bits, args.format)}: {path} "
        f"({path.stat().st_size / 2**20:.2f} MiB)"
    )
    return 0


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
