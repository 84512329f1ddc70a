"""The estimator's formulas against published figures, the papers' closed forms and DeepSpeed's own
memory estimators."""

from __future__ import annotations

import os

import pytest

from generator.estimate import RunSpec, estimate_run, formulas, parse_hardware
from reference_llm.model import ModelConfig, Transformer

GIB = 2**30


@pytest.fixture(autouse=True)
def _fixed_cpu_peak(monkeypatch):
    monkeypatch.setenv("LLMGEN_CPU_TFLOPS", "1.0")  # no matmul measurement: fast and repeatable


def gpt3_175b() -> ModelConfig:
    """GPT-3 175B (Brown et al. 2020, Table 2.1)."""
    return ModelConfig.gpt2_style(vocab_size=50257, block_size=2048, n_layer=96, n_head=96, d_model=12288)


def llama31_405b() -> ModelConfig:
    """Llama 3.1 405B (Llama 3 paper, Table 3)."""
    return ModelConfig.llama_style(
        vocab_size=128256, block_size=8192, n_layer=126, n_head=128, n_kv_head=8, d_model=16384, ffn_hidden=53248
    )


# ---- FLOPs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, tokens, published",
    [
        (gpt3_175b(), 300e9, 3.14e23),  # Brown et al. 2020, Table D.1
        (llama31_405b(), 15.6e12, 3.8e25),  # Llama 3 paper, sec. 3.2.1
    ],
)
def test_training_flops_match_published_totals(config, tokens, published):
    dense, attention = formulas.training_flops(config, tokens, config.block_size)
    assert dense == pytest.approx(published, rel=0.01)
    # the attention term is reported beside 6ND, and both add up to the library's per-token count
    assert dense + attention == pytest.approx(config.flops_per_token(config.block_size) * tokens, rel=1e-12)
    assert 0 < attention < 0.1 * dense


def test_estimate_reports_both_flop_terms():
    est = estimate_run(RunSpec(gpt3_175b(), parse_hardware("128x8xA100-80GB"), 300e9, micro_batch=1))
    assert est.flops == pytest.approx(3.14e23, rel=0.01)
    assert est.flops_total == pytest.approx(est.flops + est.flops_attention)
    d = est.to_dict()
    for key in (
        "params",
        "tokens",
        "flops",
        "gpu_hours",
        "wall_hours",
        "cost_usd",
        "mfu",
        "memory_per_gpu_gib",
        "memory_breakdown_gib",
        "fits",
        "assumptions",
        "suggestions",
    ):
        assert key in d


# ---- Activations: Korthikanti et al. 2022 --------------------------------------------------------------


def test_generalised_activations_reduce_to_the_papers_closed_forms():
    s, b, h, a, L = 2048, 4, 1024, 16, 2
    gpt = ModelConfig.gpt2_style(vocab_size=1000, block_size=s, n_layer=L, n_head=a, d_model=h, dropout=0.1)
    layer = formulas.layer_activations(gpt, s, act_bytes=2, flash=False, follow_code=False)
    assert layer.bytes(s, b) == pytest.approx(s * b * h * (34 + 5 * a * s / h))
    for t in (2, 4, 8):
        assert layer.bytes(s, b, t, sequence_parallel=False) == pytest.approx(
            formulas.korthikanti_layer_bytes(s, b, h, a, t, sequence_parallel=False)
        )
        assert layer.bytes(s, b, t, sequence_parallel=True) == pytest.approx(
            formulas.korthikanti_layer_bytes(s, b, h, a, t, sequence_parallel=True)
        )
    fused = formulas.layer_activations(gpt, s, act_bytes=2, flash=True, follow_code=False)
    assert fused.bytes(s, b) == pytest.approx(formulas.korthikanti_layer_bytes(s, b, h, a, recompute="selective"))


def test_recomputation_and_parallelism_shrink_activations_in_order():
    cfg = ModelConfig.preset("llama-7b")
    kw = dict(seq_len=4096, micro_batch=1, act_bytes=2, flash=False)
    none = formulas.activation_bytes(cfg, checkpointing="none", **kw)
    selective = formulas.activation_bytes(cfg, checkpointing="selective", **kw)
    full = formulas.activation_bytes(cfg, checkpointing="full", **kw)
    assert full < selective < none
    # full recomputation keeps one layer input per layer, plus one layer's set during its recompute
    one_layer = formulas.layer_activations(cfg, 4096, 2, False).bytes(4096, 1)
    assert full < cfg.n_layer * 4096 * cfg.d_model * 2 + one_layer + 4096 * 6 * cfg.d_model * 2
    assert formulas.activation_bytes(cfg, tp=4, **kw) == pytest.approx(none / 4)  # sequence parallel


def test_recompute_flops_factor():
    cfg = ModelConfig.preset("llama-7b")
    assert formulas.recompute_flops_factor(cfg, 4096, "none") == 1.0
    assert formulas.recompute_flops_factor(cfg, 4096, "full") == pytest.approx(4 / 3)
    assert 1.0 < formulas.recompute_flops_factor(cfg, 4096, "selective") < 1.1


# ---- Model states: ZeRO paper and DeepSpeed ------------------------------------------------------------


def test_zero_paper_accounting():
    psi, nd = 7.5e9, 64  # the ZeRO paper's Figure 1 example: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB
    assert formulas.zero_paper_bytes(psi, "ddp", nd) == pytest.approx(120e9)
    assert formulas.zero_paper_bytes(psi, "zero1", nd) == pytest.approx(31.4e9, rel=0.01)
    assert formulas.zero_paper_bytes(psi, "zero2", nd) == pytest.approx(16.6e9, rel=0.01)
    assert formulas.zero_paper_bytes(psi, "zero3", nd) == pytest.approx(1.9e9, rel=0.02)


def test_sharding_divides_by_data_parallel_degree_not_gpu_count():
    cfg = ModelConfig.preset("llama-7b")
    by_dp = formulas.model_states(cfg, "zero3", dp=8).total
    with_tp = formulas.model_states(cfg, "zero3", dp=8, shard=4).total  # 32 GPUs as tp=4 x dp=8
    assert with_tp == pytest.approx(by_dp / 4)
    est = estimate_run(RunSpec(cfg, parse_hardware("4x8xH100"), 1e9, parallelism="fsdp", tp=4, micro_batch=1))
    assert est.dp == 8


def _deepspeed():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install llmgen[deepspeed])")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs, model_to_params


@pytest.mark.parametrize(
    "preset, nodes, per_node", [("llama-7b", 1, 8), ("llama-70b", 4, 8), ("gpt2-124m", 1, 2), ("llama-8b", 2, 4)]
)
def test_zero2_and_zero3_model_states_match_deepspeed(preset, nodes, per_node):
    zero2, zero3, _ = _deepspeed()
    cfg = ModelConfig.preset(preset)
    n, gpus = cfg.num_params(), nodes * per_node
    _, ds2_gpu = zero2(n, per_node, nodes, cpu_offload=False)
    ours2 = formulas.model_states(cfg, "zero2", dp=gpus).total
    assert ours2 == pytest.approx(ds2_gpu, rel=0.05)
    largest = formulas.largest_module_params(cfg)
    _, ds3_gpu, _ = zero3(n, largest, per_node, nodes, cpu_offload=False, cpu_offload_params=False)
    ours3 = formulas.model_states(cfg, "zero3", dp=gpus).total
    assert ours3 == pytest.approx(ds3_gpu, rel=0.05)
    # and the paper's figure, shown beside it, is lower: it leaves out the fp32 gradient partitions
    assert formulas.zero_paper_bytes(n, "zero2", gpus) < ours2


def test_zero_offload_matches_deepspeed():
    zero2, zero3, _ = _deepspeed()
    cfg = ModelConfig.preset("llama-7b")
    n, largest = cfg.num_params(), formulas.largest_module_params(cfg)
    assert formulas.model_states(cfg, "zero2", 8, offload="optimizer").total == pytest.approx(
        zero2(n, 8, 1, cpu_offload=True)[1], rel=0.05
    )
    assert formulas.model_states(cfg, "zero3", 8, offload="optimizer").total == pytest.approx(
        zero3(n, largest, 8, 1, cpu_offload=True, cpu_offload_params=False)[1], rel=0.05
    )
    assert formulas.model_states(cfg, "zero3", 8, offload="params").total == pytest.approx(
        zero3(n, largest, 8, 1, cpu_offload=True, cpu_offload_params=True)[1], rel=0.05
    )


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2", "nanogpt-cpu"])
def test_largest_layer_is_what_deepspeed_measures_on_the_model(preset):
    _, _, model_to_params = _deepspeed()
    cfg = ModelConfig.preset(preset)
    total, largest = model_to_params(Transformer(cfg))
    assert total == cfg.num_params()
    assert largest == formulas.largest_module_params(cfg)


def test_fsdp_shards_everything_and_ddp_nothing():
    cfg = ModelConfig.preset("llama-8b")
    ddp = formulas.model_states(cfg, "ddp", dp=8)
    fsdp = formulas.model_states(cfg, "fsdp", dp=8)
    n = cfg.num_params()
    assert ddp.weights + ddp.gradients + ddp.optimizer == 16 * n
    assert fsdp.weights + fsdp.gradients + fsdp.optimizer == pytest.approx(16 * n / 8)
    assert fsdp.buffers < ddp.total / 8


# ---- Compute-optimal --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flops, params, tokens", [row for row in formulas.CHINCHILLA_TABLE3])
def test_chinchilla_fit_passes_through_table3(flops, params, tokens):
    n, d = formulas.chinchilla_optimal(flops)
    assert n == pytest.approx(params, rel=1e-9)
    assert 6 * n * d == pytest.approx(flops)
    assert d == pytest.approx(tokens, rel=0.08)  # the table rounds tokens; C = 6ND holds exactly here


def test_chinchilla_fit_is_monotone_and_near_20_tokens_per_parameter():
    previous = 0.0
    for exponent in range(14, 29):
        n, d = formulas.chinchilla_optimal(10.0**exponent)
        assert n > previous
        previous = n
        assert 15 < d / n < 30
        n_rule, d_rule = formulas.rule_of_thumb_optimal(10.0**exponent)
        assert d_rule == pytest.approx(20 * n_rule)
        assert 6 * n_rule * d_rule == pytest.approx(10.0**exponent)


@pytest.mark.parametrize(
    "target, vocab, arch",
    [
        (1e6, 512, "llama"),
        (124e6, None, "gpt2"),
        (1e9, None, "llama"),
        (7e9, None, "llama"),
        (70e9, None, "llama"),
        (175e9, None, "gpt2"),
    ],
)
def test_shape_for_params_lands_within_one_percent(target, vocab, arch):
    cfg = formulas.shape_for_params(target, arch, vocab_size=vocab)
    assert 64 * cfg.n_layer <= cfg.d_model <= 128 * cfg.n_layer
    assert abs(cfg.num_params() / target - 1) <= formulas.SHAPE_TOLERANCE == 0.01
    assert cfg.d_model % cfg.n_head == 0 and cfg.arch == arch
    default_width = ModelConfig.for_arch(arch, d_model=cfg.d_model, n_head=cfg.n_head).ffn_hidden
    assert default_width / 2 <= cfg.ffn_hidden <= 2 * default_width


def test_gpt3_175b_by_count_is_gpt3s_shape():
    """Where the architecture's own MLP width lands within 1%, it is kept: 175B GPT-2 style gets GPT-2's 4x MLP
    and a width over 100x its depth, as GPT-3 175B (96 layers of 12288) has."""
    cfg = formulas.shape_for_params(175e9, "gpt2")
    assert cfg.ffn_hidden == 4 * cfg.d_model and cfg.d_model / cfg.n_layer > 100


def test_kv_cache_counts_kv_heads():
    mha = ModelConfig.preset("llama-7b")
    gqa = ModelConfig.preset("llama-7b", n_kv_head=8)
    assert formulas.kv_cache_bytes(mha, 1, 4096) == 2 * 32 * 4096 * 4096 * 2
    assert formulas.kv_cache_bytes(gqa, 1, 4096) == formulas.kv_cache_bytes(mha, 1, 4096) / 4
