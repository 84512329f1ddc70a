"""LoRA: low-rank adapters on chosen Linear layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models", eq. 3).

A wrapped layer computes  y = x W^T + b + (alpha / r) · dropout(x) A^T B^T,  with A (r, in) and B (out, r).
W and b are frozen; only A and B train. B starts at zero, so a freshly wrapped model computes exactly
what the base model does; A starts like a Linear layer's weight (Kaiming-uniform), as in the paper's
reference code, so the gradient of B is not zero at the first step.

    wrapped = apply_lora(model, LoRAConfig(r=8, alpha=16, targets=("attn.qkv", "attn.proj")))
    ... train: only parameters named *.lora_A / *.lora_B have requires_grad ...
    save_lora(model, "adapter.safetensors")        # adapter weights + the LoRA config, nothing else
    merge_lora(model); unmerge_lora(model)         # fold B·A into W for inference, and back, exactly
    merged_state_dict(model)                       # the base model's names and shapes, adapters folded in

The wrapper keeps the base layer's own `weight` and `bias` Parameters under the same names, so a
wrapped model still loads a base checkpoint (`load_state_dict(..., strict=False)` ignores the missing
adapter keys) and `merged_state_dict` is exactly a pretraining-format state dict.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reference_llm.errors import CheckpointError, ConfigError
from reference_llm.train.checkpoint import unique_state_dict

DEFAULT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Module-name patterns (fnmatch); a pattern matches a full name or its dotted suffix, so "attn.qkv"
    # matches every block's "blocks.<i>.attn.qkv" and "blocks.0.*" only the first block's layers.
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"lora.r must be a positive integer, got {self.r!r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets:
            raise ConfigError(f"lora.targets must name at least one layer, e.g. {list(DEFAULT_TARGETS)}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """A frozen Linear layer plus a trainable rank-r update (see the module docstring)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameter objects: names and storage stay the base model's
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.scaling = alpha / r
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own weight init
        self.dropout = nn.Dropout(dropout)
        self._unmerged_weight: torch.Tensor | None = None  # the exact base weight while merged

    @property
    def merged(self) -> bool:
        return self._unmerged_weight is not None

    def delta_weight(self) -> torch.Tensor:
        """(out, in): the update B·A·alpha/r that merging adds to the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the weight: one matmul per call instead of three.

        A copy of the base weight is kept so that `unmerge` restores it bit for bit; subtracting the
        update back would leave float rounding in the weight. Use `merge_and_unload` to drop it.
        """
        if not self.merged:
            self._unmerged_weight = self.weight.detach().clone()
            self.weight.add_(self.delta_weight())

    @torch.no_grad()
    def unmerge(self) -> None:
        if self._unmerged_weight is not None:
            self.weight.copy_(self._unmerged_weight)
            self._unmerged_weight = None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"r={self.lora_A.shape[0]}, scaling={self.scaling:g}, merged={self.merged}"
        )


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze every parameter of `model`, wrap the Linear layers that match `config.targets`, and
    return the wrapped names. Every pattern must match at least one Linear layer."""
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    chosen = [name for name in linears if any(_matches(name, p) for p in config.targets)]
    unmatched = [p for p in config.targets if not any(_matches(n, p) for n in linears)]
    if unmatched:
        examples = ", ".join(list(linears)[:6])
        raise ConfigError(
            f"lora.targets pattern(s) {', '.join(map(repr, unmatched))} match no Linear layer; "
            f"layer names look like: {examples}"
        )
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    if tied and "lm_head" in chosen:
        raise ConfigError(
            "lora.targets includes lm_head, which is tied to tok_emb in this model; "
            "merging would change the embeddings too; leave lm_head out"
        )
    for param in model.parameters():
        param.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(linears[name], config.r, config.alpha, config.dropout))
    vars(model)["lora_config"] = config  # a plain attribute (not a submodule), remembered for save_lora
    return chosen


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _require_lora(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the model has no LoRA layers; call apply_lora first")
    return layers


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, under their full names (e.g. blocks.0.attn.qkv.lora_A)."""
    return {
        f"{name}.{part}": getattr(layer, part).detach()
        for name, layer in _require_lora(model).items()
        for part in ("lora_A", "lora_B")
    }


def save_lora(model: nn.Module, path: str | Path) -> None:
    """Write the adapters to a safetensors file; its metadata carries the LoRA config as JSON."""
    tensors = {k: v.contiguous().cpu() for k, v in lora_state_dict(model).items()}
    config = dataclasses.asdict(vars(model)["lora_config"])
    save_file(tensors, str(path), metadata={"lora_config": json.dumps(config)})


def read_lora_config(path: str | Path) -> LoRAConfig:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read LoRA adapter {path}: {exc}") from None
    if "lora_config" not in meta:
        raise CheckpointError(f"{path} is not a LoRA adapter file (no lora_config in its metadata)")
    try:
        return LoRAConfig(**json.loads(meta["lora_config"]))
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: its lora_config metadata is invalid ({exc})") from None


def load_lora(model: nn.Module, path: str | Path) -> list[str]:
    """Wrap `model` as the adapter file says and load its weights; shapes must match the model."""
    names = apply_lora(model, read_lora_config(path))
    load_lora_weights(model, path)
    return names


def load_lora_weights(model: nn.Module, path: str | Path) -> None:
    """Copy an adapter file's tensors into `model`'s LoRA layers (already wrapped); every name and
    shape must match."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read LoRA adapter {path}: {exc}") from None
    expected = lora_state_dict(model)
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unexpected:
        key = sorted(missing or unexpected)[0]
        raise CheckpointError(
            f"LoRA adapter {path} does not match this model: {'missing' if missing else 'unexpected'} tensor {key}"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"LoRA adapter {path}: {key} has shape {tuple(value.shape)}, "
                f"the model needs {tuple(expected[key].shape)}"
            )
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora_A.copy_(tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"{name}.lora_B"])


def merge_lora(model: nn.Module) -> None:
    for layer in _require_lora(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in _require_lora(model).values():
        layer.unmerge()


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights as a checkpoint stores them (same names and shapes, each tied tensor
    once) with every adapter folded in, so a LoRA run's checkpoint loads like any other."""
    layers = _require_lora(model)
    state = {k: v for k, v in unique_state_dict(model).items() if not k.endswith((".lora_A", ".lora_B"))}
    for name, layer in layers.items():
        if not layer.merged:
            state[f"{name}.weight"] = layer.weight + layer.delta_weight()
    return state


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain nn.Linear holding the merged weight (no copy kept)."""
    for name, layer in _require_lora(model).items():
        weight = layer.weight if layer._unmerged_weight is None else layer._unmerged_weight
        linear = nn.Linear(
            layer.in_features, layer.out_features, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype
        )
        linear.weight.copy_(weight + layer.delta_weight())
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
    del vars(model)["lora_config"]
    return model
