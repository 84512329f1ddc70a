"""One decoder-only Transformer that is GPT-2 or Llama depending on its config.

GPT-2 (Radford et al. 2019): LayerNorm, learned absolute positions, GELU MLP, biases, tied embeddings.
Llama (Touvron et al. 2023): RMSNorm, rotary positions (RoPE), SwiGLU MLP, no biases, grouped-query
attention (Ainslie et al. 2023) and an untied output head. The differences are fields of one
`ModelConfig`, not two model classes, so every component is written once. `ModelConfig` and the named
presets live in `model_config.py`, which does not import torch, so that the estimator can use them.

Shape legend used in comments: B batch, T tokens in this call, S tokens attended to (cache + new),
C = d_model, H query heads, K key/value heads, D = C // H head size, V vocabulary, F MLP hidden size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_llm.model.config import PRESETS, ModelConfig

__all__ = [
    "IGNORE_INDEX",
    "PRESETS",
    "ModelConfig",
    "KVCache",
    "Transformer",
    "Block",
    "Attention",
    "MLP",
    "RMSNorm",
    "make_norm",
    "rope_tables",
    "apply_rope",
    "gelu_tanh",
]

IGNORE_INDEX = -100  # targets with this value add nothing to the loss (prompt tokens in SFT, padding)


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Zhang & Sennrich 2019): LayerNorm without centring or bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32: under bf16 the mean of squares loses too many bits.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (length, head_dim), for rotary position embeddings (Su et al. 2021).

    Uses the "rotate half" layout (the first half of each head pairs with the second half), the same
    layout as Hugging Face's Llama, so weights move between the two without permutation.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (D/2,)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (length, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (length, D)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, D) by the angles for its positions; cos/sin are (T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to `max_len`.

    k[i], v[i]: (B, K, max_len, D). `length` tokens are filled; a forward pass with the cache appends
    its T new tokens at positions length..length+T-1 and advances `length`.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0

    @classmethod
    def allocate(
        cls,
        config: ModelConfig,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        max_len = config.block_size if max_len is None else max_len
        assert config.n_kv_head is not None  # ModelConfig.__post_init__ resolves None to n_head
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        return cls(
            k=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
            v=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
        )

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


class ResidualProjection(nn.Linear):
    """A Linear whose output is added to the residual stream (attention's and the MLP's `proj`); GPT-2
    scales its initial weights by 1/sqrt(2·n_layer), see `Transformer._init_weights`."""


class Attention(nn.Module):
    """Causal self-attention with H query heads sharing K key/value heads (K = H is multi-head)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.n_kv_head is not None  # ModelConfig.__post_init__ resolves None to n_head
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        kv_dim = self.n_kv_head * self.head_dim
        # One fused projection for q, k and v: one large matmul is faster than three small ones.
        self.qkv = nn.Linear(config.d_model, config.d_model + 2 * kv_dim, bias=config.bias)
        self.proj = ResidualProjection(config.d_model, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.mode = config.attention

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        H, K, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([H * D, K * D, K * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        v = v.view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        if rope is not None:
            cos, sin = rope  # already sliced to this call's positions: (T, D)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        start = 0
        if cache is not None:  # append the new keys/values, then attend over everything cached
            start = cache.length
            cache.k[layer][:, :, start : start + T] = k
            cache.v[layer][:, :, start : start + T] = v
            k, v = cache.k[layer][:, :, : start + T], cache.v[layer][:, :, : start + T]  # (B, K, S, D)

        if K != H:  # grouped-query: each key/value head serves H/K query heads
            k = k.repeat_interleave(H // K, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(H // K, dim=1)

        dropout = self.dropout if self.training else 0.0
        if self._use_sdpa(x, T):
            # is_causal aligns the mask to the top-left corner, right only when no cache precedes.
            mask = None if start == 0 else _causal_mask(T, start, x.device)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=start == 0 and T > 1
            )
        else:
            y = _manual_attention(q, k, v, start, dropout)
        # Re-join heads: (B, T, H·D), which is C unless tensor parallelism left this rank H/tp heads.
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.proj(y)

    def _use_sdpa(self, x: torch.Tensor, T: int) -> bool:
        """SDPA everywhere except contexts up to 1024 tokens under CPU bf16, where the manual path's
        forward + backward measured faster than SDPA's CPU flash kernel, eager and compiled: 3.7x at
        T=64, 1.5-2x at T=256-512, 1.3x at T=1024; at 2048 SDPA wins (1.5x) and saves the (T, T) scores'
        memory. In fp32, SDPA is as fast or faster at every length (AVX512-BF16 CPU, torch 2.13)."""
        if self.mode != "auto":
            return self.mode == "sdpa"
        if x.device.type != "cpu":
            return True
        cpu_bf16 = torch.is_autocast_enabled("cpu") or x.dtype == torch.bfloat16
        return not (cpu_bf16 and T <= 1024)


def _causal_mask(T: int, start: int, device: torch.device) -> torch.Tensor:
    """(T, start+T) boolean mask: query i (absolute position start+i) sees keys 0..start+i."""
    return torch.ones(T, start + T, dtype=torch.bool, device=device).tril(diagonal=start)


def _manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, dropout: float) -> torch.Tensor:
    B, H, T, D = q.shape
    S = k.shape[2]
    # The causal mask as an additive bias (0 where a key is seen, -inf where not), so that one
    # baddbmm computes bias + q·kᵀ/√D: the scale and the mask ride on the matmul instead of costing
    # two more passes over the (B, H, T, S) scores, forward and backward.
    bias = torch.zeros(T, S, dtype=q.dtype, device=q.device).masked_fill(
        ~_causal_mask(T, start, q.device), float("-inf")
    )
    scores = torch.baddbmm(bias, q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2), alpha=1.0 / math.sqrt(D))
    # In q's dtype: PyTorch's softmax kernels accumulate in float32 for bf16/fp16 inputs anyway (the
    # forward is bit-identical to casting to float32 and back), and the two casts cost more than the softmax.
    weights = F.softmax(scores, dim=-1)  # (B·H, T, S)
    if dropout:
        weights = F.dropout(weights, p=dropout)
    return torch.bmm(weights, v.flatten(0, 1)).view(B, H, T, D)


class MLP(nn.Module):
    """GELU: proj(gelu(fc(x))). SwiGLU (Shazeer 2020): proj(silu(gate(x)) * up(x)), gate and up fused."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        hidden = config.ffn_hidden
        assert hidden is not None  # ModelConfig.__post_init__ resolves None to the architecture's rule
        self.fc = nn.Linear(config.d_model, 2 * hidden if self.swiglu else hidden, bias=config.bias)
        self.proj = ResidualProjection(hidden, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (B, T, F) or (B, T, 2F)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = gelu_tanh(h)  # GPT-2's GELU
        return self.proj(h)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as `F.gelu(x, approximate="tanh")`.

    Under torch.compile it is written with the identity 0.5·(1 + tanh(z)) = sigmoid(2z): the same
    function (within fp32 rounding), but the kernel inductor generates for the CPU is then 2-3x faster,
    because its vectorised tanh is much slower than its exp. Eager mode keeps PyTorch's one fused kernel.
    """
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))  # 1.5957... = 2·√(2/π)
    return F.gelu(x, approximate="tanh")


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = Attention(config)
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), rope, cache, layer))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


class Transformer(nn.Module):
    rope_cos: torch.Tensor  # (block_size, D/2) buffers, RoPE models only
    rope_sin: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.block_size, config.d_model) if config.position == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if config.position == "rope":
            cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta)
            # Not persistent: derived from the config, so checkpoints need not carry them.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2·n_layer) so the
        residual stream's variance does not grow with depth."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if isinstance(module, ResidualProjection):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Counted from the tensors (shared tensors once); equals `config.num_params`."""
        total = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            total -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                total -= self.pos_emb.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, C) for token ids idx (B, T)."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size={self.config.block_size}")
        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))
        else:
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.length = start + T
        return self.norm_f(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, V), and the mean cross-entropy over targets (B, T)
        when given (positions whose target is IGNORE_INDEX are left out)."""
        logits = self.lm_head(self.hidden_states(idx, cache))  # (B, T, V)
        loss = None
        if targets is not None:
            # float32 for the softmax: bf16 logits over a large vocabulary lose the small probabilities.
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return logits, loss
