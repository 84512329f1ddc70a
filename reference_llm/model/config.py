"""The model's shape as data: `ModelConfig` and the named `PRESETS`.

Kept apart from `reference_llm.model` so that code which only reasons about a model's size (the
estimator, `llmgen new`) does not have to import torch, which costs over a second at start-up.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reference_llm.errors import ConfigError

# Upper bounds on the shape fields, checked before anything is built from a config (a hostile or
# mistyped checkpoint must not make the first allocation take the machine down). Each is far above
# any published model: Llama 3's vocabulary is 128,256, the longest contexts are around 1M tokens,
# the widest models 16,384 (d_model) with 53,248 hidden units and 126 layers (Llama 3.1 405B).
MAX_DIMENSIONS: dict[str, int] = {
    "vocab_size": 1 << 22,  # 4,194,304
    "block_size": 1 << 20,  # 1,048,576
    "n_layer": 1024,
    "n_head": 1024,
    "n_kv_head": 1024,
    "d_model": 1 << 16,  # 65,536
    "ffn_hidden": 1 << 18,  # 262,144
}
# Real-valued fields: (lowest, highest) allowed, both exclusive; NaN and infinities are refused.
REAL_RANGES: dict[str, tuple[float, float]] = {
    "norm_eps": (0.0, 1.0),
    "rope_theta": (1.0, 1e12),  # RoPE frequencies are theta^(-2i/D): they fall with i only for theta > 1
}


@dataclass
class ModelConfig:
    """Everything that fixes the model's shape and its variant. Presets: `ModelConfig.preset(name)`."""

    vocab_size: int = 50304
    block_size: int = 1024  # longest sequence the model accepts (context length)
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: same as n_head (multi-head); fewer: grouped-query attention
    d_model: int = 768
    ffn_hidden: int | None = None  # None: 4*d_model for GELU, Llama's 8/3*d_model rule for SwiGLU
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    position: str = "learned"  # "learned" | "rope"
    rope_theta: float = 10000.0
    mlp: str = "gelu"  # "gelu" | "swiglu"
    bias: bool = True  # biases in Linear and LayerNorm layers
    tie_embeddings: bool = True  # output head shares the token embedding matrix
    dropout: float = 0.0
    attention: str = "auto"  # "auto" | "sdpa" | "manual" (see `reference_llm.model.Attention._use_sdpa`)
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.ffn_hidden is None:
            _check_dimension("d_model", self.d_model)  # before arithmetic on it
            self.ffn_hidden = _default_ffn_hidden(self.d_model, self.mlp)
        self.validate()

    # -- construction --------------------------------------------------------------------------------

    @classmethod
    def gpt2_style(cls, **overrides: Any) -> ModelConfig:
        """GPT-2 defaults (LayerNorm, learned positions, GELU, biases, tied head) plus overrides."""
        base: dict[str, Any] = dict(norm="layernorm", position="learned", mlp="gelu", bias=True, tie_embeddings=True)
        return cls(**{**base, **overrides})

    @classmethod
    def llama_style(cls, **overrides: Any) -> ModelConfig:
        """Llama defaults (RMSNorm, RoPE, SwiGLU, no biases, untied head) plus overrides."""
        base: dict[str, Any] = dict(
            norm="rmsnorm", position="rope", mlp="swiglu", bias=False, tie_embeddings=False, norm_eps=1e-5
        )
        return cls(**{**base, **overrides})

    @classmethod
    def for_arch(cls, arch: str, **overrides: Any) -> ModelConfig:
        """`arch` is "gpt2" or "llama"."""
        builders = {"gpt2": cls.gpt2_style, "llama": cls.llama_style}
        if arch not in builders:
            raise ConfigError(f"unknown architecture {arch!r}; expected one of: {', '.join(builders)}")
        return builders[arch](**overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named shape from `PRESETS`, with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
        arch, fields = PRESETS[name]
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown model field(s) {', '.join(sorted(unknown))}")
        return cls.for_arch(arch, name=name, **{**fields, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; rejects unknown keys with a message naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model field(s) {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Types, bounds (`MAX_DIMENSIONS`, `REAL_RANGES`) and consistency of every field; ConfigError
        names the first field that is wrong. Runs on construction, so on every config read from a file."""
        for key in MAX_DIMENSIONS:
            _check_dimension(key, getattr(self, key))
        for key, (low, high) in REAL_RANGES.items():
            value = getattr(self, key)
            if not _is_real(value) or not low < value < high:
                raise ConfigError(
                    f"model.{key} must be a finite number between {low:g} and {high:g} (exclusive), got {value!r}"
                )
        for key in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"model.{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.name, str) or len(self.name) > 200:
            raise ConfigError(f"model.name must be a string of at most 200 characters, got {self.name!r:.60}")
        if self.d_model % self.n_head:
            raise ConfigError(f"model.n_head={self.n_head} must divide model.d_model={self.d_model}")
        if self.n_head % self.n_kv_head:  # type: ignore[operator]
            raise ConfigError(f"model.n_kv_head={self.n_kv_head} must divide model.n_head={self.n_head}")
        choices = {
            "norm": ("layernorm", "rmsnorm"),
            "position": ("learned", "rope"),
            "mlp": ("gelu", "swiglu"),
            "attention": ("auto", "sdpa", "manual"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"model.{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head size; d_model/n_head = {self.head_dim}")
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout!r}")

    def memory_bytes(self, bytes_per_param: int = 4) -> int:
        """Bytes that building `Transformer(self)` allocates: the parameters at `bytes_per_param` each,
        plus the float32 RoPE tables (cos and sin, block_size x head_dim each)."""
        rope = 2 * self.block_size * self.head_dim * 4 if self.position == "rope" else 0
        return self.num_params() * bytes_per_param + rope

    def check_memory(self, bytes_per_param: int = 4, extra_bytes: int = 0, what: str = "building the model") -> None:
        """ConfigError when `memory_bytes(bytes_per_param) + extra_bytes` exceeds the memory this
        process can still get (`available_memory_bytes`); call it before allocating the model, so that a
        config too large for the machine is one line rather than the kernel's OOM killer."""
        needed = self.memory_bytes(bytes_per_param) + extra_bytes
        free = available_memory_bytes()
        if free is not None and needed > free:
            raise ConfigError(
                f"{what} needs about {_gib(needed)} of memory ({self.num_params():,} parameters of "
                f"{bytes_per_param} bytes{' and more' if extra_bytes else ''}) but only {_gib(free)} "
                f"is available"
            )

    # -- derived quantities ------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def arch(self) -> str:
        """ "gpt2" or "llama" when the fields match that family exactly, else "custom"."""
        if (self.norm, self.position, self.mlp) == ("layernorm", "learned", "gelu"):
            return "gpt2"
        if (self.norm, self.position, self.mlp) == ("rmsnorm", "rope", "swiglu"):
            return "llama"
        return "custom"

    def num_params(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of `Transformer(self)`, computed from the shape alone.

        `include_embeddings=False` leaves out the token and position embeddings and an untied output
        head, the convention of Kaplan et al. (2020) for "non-embedding" parameters.
        """
        C, F_, V, L = self.d_model, self.ffn_hidden, self.vocab_size, self.n_layer
        kv = self.n_kv_head * self.head_dim  # type: ignore[operator]
        b = 1 if self.bias else 0
        norm = C * (2 if self.norm == "layernorm" and self.bias else 1)
        attn = C * (C + 2 * kv) + b * (C + 2 * kv) + C * C + b * C  # fused qkv, then output projection
        n_mats = 3 if self.mlp == "swiglu" else 2
        mlp = n_mats * C * F_ + b * ((n_mats - 1) * F_ + C)  # type: ignore[operator]
        body = L * (attn + mlp + 2 * norm) + norm  # blocks and the final norm
        if not include_embeddings:
            return body
        embeddings = V * C + (self.block_size * C if self.position == "learned" else 0)
        head = 0 if self.tie_embeddings else V * C
        return body + embeddings + head

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per token: 6N + 12·L·C·T for a training step, 2N + 4·L·C·T for a forward pass.

        N counts the weights that take part in a matmul (every block weight and the output head; an
        embedding lookup is not a matmul). The attention term follows PaLM (Chowdhery et al. 2022,
        appendix B) for a causal model: QK^T and AV each cost 2·T·C per token per layer forward.
        """
        T = self.block_size if seq_len is None else seq_len
        n_matmul = self.num_params(include_embeddings=False) + self.vocab_size * self.d_model
        forward = 2 * n_matmul + 4 * self.n_layer * self.d_model * T
        return float(3 * forward if training else forward)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_dimension(key: str, value: Any) -> None:
    limit = MAX_DIMENSIONS[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
        raise ConfigError(f"model.{key} must be a positive integer of at most {limit:,}, got {value!r:.60}")


def available_memory_bytes() -> int | None:
    """Memory this process can still allocate: the kernel's MemAvailable, lowered to what is left of
    the cgroup (container, Slurm job) limit when there is one; the free physical pages where there is
    no /proc; None when neither can be read."""
    free: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _default_ffn_hidden(d_model: int, mlp: str) -> int:
    if mlp == "swiglu":  # Llama: 2/3 of 4·C so SwiGLU's three matrices cost what GELU's two do, rounded to 256
        hidden = int(2 * 4 * d_model / 3)
        return 256 * ((hidden + 255) // 256)
    return 4 * d_model


# name -> (arch, fields). Small presets are for tests and CPU; the large ones give real shapes to the
# estimator (published configs: GPT-2 from OpenAI's release, Llama from Meta's model cards).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("llama", dict(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_kv_head=2, d_model=64)),
    "tiny-gpt2": ("gpt2", dict(vocab_size=512, block_size=64, n_layer=2, n_head=4, d_model=64)),
    # demo: tuned for 3 minutes of training on 2 CPU cores (benchmarks/demo_quality.py); vocab_size is
    # replaced by the tokenizer's when training.
    "demo": (
        "llama",
        dict(
            vocab_size=1024,
            block_size=256,
            n_layer=4,
            n_head=4,
            n_kv_head=4,
            d_model=192,
            ffn_hidden=512,
            tie_embeddings=True,
        ),
    ),
    "nanogpt-cpu": ("gpt2", dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, d_model=128, bias=False)),
    "nanogpt-shakespeare": ("gpt2", dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, d_model=384, bias=False)),
    "gpt2-124m": ("gpt2", dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, d_model=768)),
    "gpt2-350m": ("gpt2", dict(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, d_model=1024)),
    "gpt2-774m": ("gpt2", dict(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, d_model=1280)),
    "gpt2-1.5b": ("gpt2", dict(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, d_model=1600)),
    "llama-1b": (
        "llama",
        dict(
            vocab_size=128256,
            block_size=8192,
            n_layer=16,
            n_head=32,
            n_kv_head=8,
            d_model=2048,
            ffn_hidden=8192,
            tie_embeddings=True,
            rope_theta=500000.0,
        ),
    ),
    "llama-3b": (
        "llama",
        dict(
            vocab_size=128256,
            block_size=8192,
            n_layer=28,
            n_head=24,
            n_kv_head=8,
            d_model=3072,
            ffn_hidden=8192,
            tie_embeddings=True,
            rope_theta=500000.0,
        ),
    ),
    "llama-7b": (
        "llama",
        dict(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, d_model=4096, ffn_hidden=11008),
    ),
    "llama-8b": (
        "llama",
        dict(
            vocab_size=128256,
            block_size=8192,
            n_layer=32,
            n_head=32,
            n_kv_head=8,
            d_model=4096,
            ffn_hidden=14336,
            rope_theta=500000.0,
        ),
    ),
    "llama-13b": (
        "llama",
        dict(vocab_size=32000, block_size=4096, n_layer=40, n_head=40, d_model=5120, ffn_hidden=13824),
    ),
    "llama-70b": (
        "llama",
        dict(
            vocab_size=128256,
            block_size=8192,
            n_layer=80,
            n_head=64,
            n_kv_head=8,
            d_model=8192,
            ffn_hidden=28672,
            rope_theta=500000.0,
        ),
    ),
}
