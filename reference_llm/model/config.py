"""The model's shape as data: `ModelConfig` and the named `PRESETS`.

Kept apart from `reference_llm.model` so that code which only reasons about a model's size (the
estimator, `llmgen new`) does not have to import torch, which costs over a second at start-up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from reference_llm.errors import ConfigError


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
        positive = ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "d_model", "ffn_hidden")
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{key} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise ConfigError(f"model.n_head={self.n_head} must divide model.d_model={self.d_model}")
        if self.n_head % self.n_kv_head:  # type: ignore[operator]
            raise ConfigError(f"model.n_kv_head={self.n_kv_head} must divide model.n_head={self.n_head}")
        choices = {"norm": ("layernorm", "rmsnorm"), "position": ("learned", "rope"), "mlp": ("gelu", "swiglu"),
                   "attention": ("auto", "sdpa", "manual")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"model.{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head size; d_model/n_head = {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")

    # -- derived quantities ------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def arch(self) -> str:
        """"gpt2" or "llama" when the fields match that family exactly, else "custom"."""
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
    "demo": ("llama", dict(vocab_size=1024, block_size=256, n_layer=4, n_head=4, n_kv_head=4, d_model=192,
                           ffn_hidden=512, tie_embeddings=True)),
    "nanogpt-cpu": ("gpt2", dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, d_model=128, bias=False)),
    "nanogpt-shakespeare": ("gpt2", dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, d_model=384,
                                         bias=False)),
    "gpt2-124m": ("gpt2", dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, d_model=768)),
    "gpt2-350m": ("gpt2", dict(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, d_model=1024)),
    "gpt2-774m": ("gpt2", dict(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, d_model=1280)),
    "gpt2-1.5b": ("gpt2", dict(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, d_model=1600)),
    "llama-1b": ("llama", dict(vocab_size=128256, block_size=8192, n_layer=16, n_head=32, n_kv_head=8,
                               d_model=2048, ffn_hidden=8192, tie_embeddings=True, rope_theta=500000.0)),
    "llama-3b": ("llama", dict(vocab_size=128256, block_size=8192, n_layer=28, n_head=24, n_kv_head=8,
                               d_model=3072, ffn_hidden=8192, tie_embeddings=True, rope_theta=500000.0)),
    "llama-7b": ("llama", dict(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, d_model=4096,
                               ffn_hidden=11008)),
    "llama-8b": ("llama", dict(vocab_size=128256, block_size=8192, n_layer=32, n_head=32, n_kv_head=8,
                               d_model=4096, ffn_hidden=14336, rope_theta=500000.0)),
    "llama-13b": ("llama", dict(vocab_size=32000, block_size=4096, n_layer=40, n_head=40, d_model=5120,
                                ffn_hidden=13824)),
    "llama-70b": ("llama", dict(vocab_size=128256, block_size=8192, n_layer=80, n_head=64, n_kv_head=8,
                                d_model=8192, ffn_hidden=28672, rope_theta=500000.0)),
}
