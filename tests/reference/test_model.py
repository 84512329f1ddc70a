"""The model: shapes, parameter counts, attention variants, RoPE, KV cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference_llm.errors import ConfigError
from reference_llm.model.transformer import (
    IGNORE_INDEX,
    PRESETS,
    KVCache,
    ModelConfig,
    Transformer,
    _manual_attention,
    apply_rope,
    gelu_tanh,
    rope_tables,
)

SMALL = [name for name in PRESETS if ModelConfig.preset(name).num_params() < 20e6]


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_forward_shapes_and_loss(name: str) -> None:
    config = ModelConfig.preset(name)
    model = Transformer(config)
    idx = torch.randint(0, config.vocab_size, (3, 17))
    logits, loss = model(idx)
    assert logits.shape == (3, 17, config.vocab_size)
    assert loss is None
    targets = torch.randint(0, config.vocab_size, (3, 17))
    logits, loss = model(idx, targets=targets)
    assert loss is not None and loss.ndim == 0
    # At init the prediction is near uniform, so the loss on random targets is near ln(V).
    assert abs(loss.item() - torch.log(torch.tensor(float(config.vocab_size))).item()) < 0.5
    assert model.hidden_states(idx).shape == (3, 17, config.d_model)


def test_ignored_targets_do_not_count() -> None:
    config = ModelConfig.preset("tiny")
    model = Transformer(config)
    idx = torch.randint(0, config.vocab_size, (2, 8))
    targets = idx.clone()
    _, full = model(idx, targets)
    targets[:, :4] = IGNORE_INDEX
    logits, partial = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, config.vocab_size), idx[:, 4:].reshape(-1))
    assert torch.allclose(partial, expected, atol=1e-6)
    assert not torch.allclose(partial, full)


@pytest.mark.parametrize("name", SMALL)
def test_param_count_formula_matches_tensors(name: str) -> None:
    config = ModelConfig.preset(name)
    model = Transformer(config)
    assert model.num_params() == config.num_params()
    assert model.num_params(include_embeddings=False) == config.num_params(include_embeddings=False)


@pytest.mark.parametrize(
    "name, published",
    [
        ("gpt2-124m", 124.44e6),
        ("llama-7b", 6.738e9),
        ("llama-8b", 8.03e9),
        ("llama-70b", 70.55e9),
    ],
)
def test_param_counts_match_published_models(name: str, published: float) -> None:
    assert ModelConfig.preset(name).num_params() == pytest.approx(published, rel=2e-3)


def test_family_fields() -> None:
    gpt2, llama = ModelConfig.preset("tiny-gpt2"), ModelConfig.preset("tiny")
    assert (gpt2.arch, llama.arch) == ("gpt2", "llama")
    g, lm = Transformer(gpt2), Transformer(llama)
    assert g.pos_emb is not None and lm.pos_emb is None
    assert isinstance(lm.norm_f, torch.nn.Module) and type(lm.norm_f).__name__ == "RMSNorm"
    assert g.lm_head.weight is g.tok_emb.weight  # tied
    untied = Transformer(ModelConfig.preset("tiny", tie_embeddings=False))
    assert untied.lm_head.weight is not untied.tok_emb.weight


def test_gqa_with_all_kv_heads_is_multi_head() -> None:
    """n_kv_head == n_head must be exactly standard multi-head attention: same weights, same output."""
    torch.manual_seed(0)
    mha = Transformer(ModelConfig.preset("tiny", n_kv_head=None)).eval()
    explicit = Transformer(ModelConfig.preset("tiny", n_kv_head=4)).eval()
    explicit.load_state_dict(mha.state_dict())
    idx = torch.randint(0, 512, (2, 12))
    assert torch.equal(mha(idx)[0], explicit(idx)[0])


def test_gqa_shares_kv_heads_between_query_groups() -> None:
    """With 2 KV heads for 4 query heads, duplicating each KV head gives an equivalent MHA model."""
    torch.manual_seed(0)
    gqa_cfg = ModelConfig.preset("tiny", n_kv_head=2)
    gqa = Transformer(gqa_cfg).eval()
    mha = Transformer(ModelConfig.preset("tiny", n_kv_head=4)).eval()
    state = gqa.state_dict()
    C, D, K = gqa_cfg.d_model, gqa_cfg.head_dim, gqa_cfg.n_kv_head
    for i in range(gqa_cfg.n_layer):
        w = state[f"blocks.{i}.attn.qkv.weight"]
        q, k, v = w.split([C, K * D, K * D])
        widen = lambda t: t.view(K, D, C).repeat_interleave(2, dim=0).reshape(-1, C)  # noqa: E731
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, widen(k), widen(v)])
    mha.load_state_dict(state)
    idx = torch.randint(0, 512, (2, 12))
    assert torch.allclose(gqa(idx)[0], mha(idx)[0], atol=1e-5)


def test_rope_depends_only_on_relative_position() -> None:
    """<rope(q, m), rope(k, n)> is a function of m - n alone (Su et al. 2021)."""
    torch.manual_seed(0)
    D = 16
    cos, sin = rope_tables(D, 64, 10000.0)
    q, k = torch.randn(D), torch.randn(D)

    def score(m: int, n: int) -> float:
        rq = apply_rope(q.view(1, 1, 1, D), cos[m : m + 1], sin[m : m + 1]).flatten()
        rk = apply_rope(k.view(1, 1, 1, D), cos[n : n + 1], sin[n : n + 1]).flatten()
        return float(rq @ rk)

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(10, 10) == pytest.approx(score(0, 0), abs=1e-4)
    assert score(9, 2) != pytest.approx(score(5, 2), abs=1e-3)
    # A rotation keeps the norm.
    rq = apply_rope(q.view(1, 1, 1, D), cos[7:8], sin[7:8])
    assert rq.norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_cached_logits_equal_uncached(name: str, attention: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig.preset(name, attention=attention)
    model = Transformer(config).eval()
    idx = torch.randint(0, config.vocab_size, (2, 24))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache.allocate(config, batch_size=2)
        chunks = [model(idx[:, :9], cache=cache)[0], model(idx[:, 9:15], cache=cache)[0]]
        chunks += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(15, 24)]
    assert cache.length == 24
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5)


def test_sdpa_and_manual_attention_agree() -> None:
    torch.manual_seed(0)
    sdpa = Transformer(ModelConfig.preset("tiny", attention="sdpa")).eval()
    manual = Transformer(ModelConfig.preset("tiny", attention="manual")).eval()
    manual.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 512, (2, 30))
    assert torch.allclose(sdpa(idx)[0], manual(idx)[0], atol=1e-5)


@pytest.mark.parametrize("start", [0, 5])
def test_manual_attention_is_softmax_of_masked_scaled_scores(start: int) -> None:
    """The manual path (one baddbmm with an additive causal bias, softmax in the input dtype) is the
    textbook formula softmax(q·kᵀ/√D, masked) @ v, in fp32 and, with a new-token offset, for the cache."""
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 7, 8
    q = torch.randn(B, H, T, D)
    k, v = torch.randn(B, H, start + T, D), torch.randn(B, H, start + T, D)
    scores = q @ k.transpose(-2, -1) / D**0.5
    visible = torch.arange(start + T)[None, :] <= start + torch.arange(T)[:, None]  # key j seen by query i
    want = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(_manual_attention(q, k, v, start, dropout=0.0), want, rtol=1e-5, atol=1e-6)


def test_manual_attention_bf16_softmax_forward_equals_the_float32_one() -> None:
    """Why the manual path may skip the float32 round trip: on the CPU, softmax over bf16 scores gives
    bit for bit what casting to float32, softmax and casting back gives."""
    torch.manual_seed(0)
    scores = (
        (3 * torch.randn(4, 64, 64)).bfloat16().masked_fill(~torch.ones(64, 64, dtype=torch.bool).tril(), float("-inf"))
    )
    assert torch.equal(F.softmax(scores, dim=-1), F.softmax(scores.float(), dim=-1).bfloat16())


@pytest.mark.parametrize(
    "dtype, T, want_sdpa",
    [
        (torch.float32, 64, True),  # fp32: SDPA's flash kernel is as fast or faster at every length
        (torch.float32, 2048, True),
        (torch.bfloat16, 64, False),  # CPU bf16: the manual path is faster up to 1024 tokens
        (torch.bfloat16, 1024, False),
        (torch.bfloat16, 2048, True),
    ],
)
def test_auto_attention_choice_on_the_cpu(dtype: torch.dtype, T: int, want_sdpa: bool) -> None:
    attention = Transformer(ModelConfig.preset("tiny")).blocks[0].attn
    x = torch.zeros(1, T, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        assert attention._use_sdpa(x, T) is want_sdpa
    assert attention._use_sdpa(x.to(dtype), T) is want_sdpa  # a bf16 model without autocast alike
    for mode, want in (("sdpa", True), ("manual", False)):  # an explicit mode is never overridden
        attention.mode = mode
        assert attention._use_sdpa(x, T) is want


def test_sdpa_and_manual_attention_train_alike_under_bf16_autocast() -> None:
    """Either path computes the same function: the loss and the gradients of a bf16 training step agree
    within bf16 rounding, so the automatic choice changes speed, not what is learned."""
    torch.manual_seed(0)
    models = {mode: Transformer(ModelConfig.preset("tiny", attention=mode)) for mode in ("sdpa", "manual")}
    models["manual"].load_state_dict(models["sdpa"].state_dict())
    idx, targets = torch.randint(0, 512, (2, 48)), torch.randint(0, 512, (2, 48))
    losses, grads = {}, {}
    for mode, model in models.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(idx, targets)
        loss.backward()
        losses[mode] = loss.item()
        grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert losses["manual"] == pytest.approx(losses["sdpa"], rel=1e-2)
    cosine = F.cosine_similarity(grads["manual"], grads["sdpa"], dim=0).item()
    assert cosine > 0.99 and not torch.equal(grads["manual"], grads["sdpa"])  # two kernels, not one path twice


def test_causality() -> None:
    """Changing a later token never changes earlier logits."""
    model = Transformer(ModelConfig.preset("tiny")).eval()
    idx = torch.randint(0, 512, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 512
    a, b = model(idx)[0], model(changed)[0]
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.equal(a[:, 10:], b[:, 10:])


def test_sequence_longer_than_block_size_is_refused() -> None:
    config = ModelConfig.preset("tiny")
    with pytest.raises(ValueError, match="block_size"):
        Transformer(config)(torch.zeros(1, config.block_size + 1, dtype=torch.long))


def test_flops_per_token_counts_matmuls_and_attention() -> None:
    c = ModelConfig.preset("gpt2-124m")
    n = c.num_params(include_embeddings=False) + c.vocab_size * c.d_model
    assert c.flops_per_token(1024) == 6 * n + 12 * c.n_layer * c.d_model * 1024
    assert c.flops_per_token(1024, training=False) == c.flops_per_token(1024) / 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=100, n_head=3), "must divide model.d_model"),
        (dict(n_head=4, n_kv_head=3), "must divide model.n_head"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(norm="batchnorm"), "model.norm must be one of"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_bad_configs_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig.preset("tiny", **kwargs)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown model preset 'gpt5'.*tiny"):
        ModelConfig.preset("gpt5")


def test_config_round_trips_through_dict() -> None:
    config = ModelConfig.preset("llama-8b")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown model field"):
        ModelConfig.from_dict({**config.to_dict(), "n_layers": 3})


def test_gelu_tanh_compiled_form_is_gpt2s_gelu():
    """Under torch.compile `gelu_tanh` uses sigmoid(2z) in place of 0.5·(1 + tanh(z)) (faster on CPU);
    values and gradients must still be those of F.gelu(approximate="tanh")."""
    x = torch.linspace(-8, 8, 4001, dtype=torch.float32)
    compiled = torch.compile(gelu_tanh, fullgraph=True)
    got_x, want_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = compiled(got_x), F.gelu(want_x, approximate="tanh")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(got_x.grad, want_x.grad, rtol=1e-5, atol=1e-5)  # the slope is at most 1.13
    assert torch.equal(gelu_tanh(x), F.gelu(x, approximate="tanh"))  # eager: PyTorch's own kernel
