"""The estimator's formulas against published figures, the papers' closed forms and DeepSpeed's own
memory estimators."""

from __future__ import annotations

import math
import os
import statistics

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
    return ModelConfig.llama_style(vocab_size=128256, block_size=8192, n_layer=126, n_head=128, n_kv_head=8,
                                   d_model=16384, ffn_hidden=53248)


# ---- FLOPs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, tokens, published", [
    (gpt3_175b(), 300e9, 3.14e23),  # Brown et al. 2020, Table D.1
    (llama31_405b(), 15.6e12, 3.8e25),  # Llama 3 paper, sec. 3.2.1
])
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
    for key in ("params", "tokens", "flops", "gpu_hours", "wall_hours", "cost_usd", "mfu", "memory_per_gpu_gib",
                "memory_breakdown_gib", "fits", "assumptions", "suggestions"):
        assert key in d


# ---- GPU-hours against published runs ------------------------------------------------------------------

_L = ModelConfig.llama_style
# (run, shape, tokens, hardware, published GPU-hours): LLaMA paper Table 15, Llama 2 paper Table 2,
# Llama 3.1 model card. Shapes from the same papers.
PUBLISHED_RUNS = [
    ("LLaMA 7B", _L(vocab_size=32000, block_size=2048, n_layer=32, n_head=32, d_model=4096, ffn_hidden=11008),
     1.0e12, "256x8xA100-80GB", 82_432),
    ("LLaMA 13B", _L(vocab_size=32000, block_size=2048, n_layer=40, n_head=40, d_model=5120, ffn_hidden=13824),
     1.0e12, "256x8xA100-80GB", 135_168),
    ("LLaMA 33B", _L(vocab_size=32000, block_size=2048, n_layer=60, n_head=52, d_model=6656, ffn_hidden=17920),
     1.4e12, "256x8xA100-80GB", 530_432),
    ("LLaMA 65B", _L(vocab_size=32000, block_size=2048, n_layer=80, n_head=64, d_model=8192, ffn_hidden=22016),
     1.4e12, "256x8xA100-80GB", 1_022_362),
    ("Llama 2 7B", _L(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, d_model=4096, ffn_hidden=11008),
     2.0e12, "256x8xA100-80GB", 184_320),
    ("Llama 2 13B", _L(vocab_size=32000, block_size=4096, n_layer=40, n_head=40, d_model=5120, ffn_hidden=13824),
     2.0e12, "256x8xA100-80GB", 368_640),
    ("Llama 2 70B", _L(vocab_size=32000, block_size=4096, n_layer=80, n_head=64, n_kv_head=8, d_model=8192,
                       ffn_hidden=28672), 2.0e12, "256x8xA100-80GB", 1_720_320),
    ("Llama 3.1 8B", ModelConfig.preset("llama-8b"), 15e12, "2048x8xH100", 1_460_000),
    ("Llama 3.1 70B", ModelConfig.preset("llama-70b"), 15e12, "2048x8xH100", 7_000_000),
    ("Llama 3.1 405B", llama31_405b(), 15.6e12, "2048x8xH100", 30_840_000),
]


def _relative_error(run) -> float:
    _, config, tokens, hardware, published = run
    est = estimate_run(RunSpec(config, parse_hardware(hardware), tokens, micro_batch=1))
    return est.gpu_hours / published - 1


@pytest.mark.parametrize("run", [r for r in PUBLISHED_RUNS if r[0] in ("LLaMA 7B", "Llama 2 7B")], ids=lambda r: r[0])
def test_default_mfu_reproduces_llama_7b_gpu_hours(run):
    assert abs(_relative_error(run)) <= 0.25


def test_median_error_over_published_runs_is_small():
    errors = [_relative_error(run) for run in PUBLISHED_RUNS]
    assert abs(statistics.median(errors)) < 0.10  # docs/estimator.md lists every run and its error


# ---- Activations: Korthikanti et al. 2022 --------------------------------------------------------------


def test_generalised_activations_reduce_to_the_papers_closed_forms():
    s, b, h, a, L = 2048, 4, 1024, 16, 2
    gpt = ModelConfig.gpt2_style(vocab_size=1000, block_size=s, n_layer=L, n_head=a, d_model=h, dropout=0.1)
    layer = formulas.layer_activations(gpt, s, act_bytes=2, flash=False, follow_code=False)
    assert layer.bytes(s, b) == pytest.approx(s * b * h * (34 + 5 * a * s / h))
    for t in (2, 4, 8):
        assert layer.bytes(s, b, t, sequence_parallel=False) == pytest.approx(
            formulas.korthikanti_layer_bytes(s, b, h, a, t, sequence_parallel=False))
        assert layer.bytes(s, b, t, sequence_parallel=True) == pytest.approx(
            formulas.korthikanti_layer_bytes(s, b, h, a, t, sequence_parallel=True))
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
    est = estimate_run(RunSpec(cfg, parse_hardware("4x8xH100"), 1e9, parallelism="zero3", tp=4, micro_batch=1))
    assert est.dp == 8


def _deepspeed():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install llmgen[deepspeed])")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs, model_to_params


@pytest.mark.parametrize("preset, nodes, per_node", [
    ("llama-7b", 1, 8), ("llama-70b", 4, 8), ("gpt2-124m", 1, 2), ("llama-8b", 2, 4)])
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
        zero2(n, 8, 1, cpu_offload=True)[1], rel=0.05)
    assert formulas.model_states(cfg, "zero3", 8, offload="optimizer").total == pytest.approx(
        zero3(n, largest, 8, 1, cpu_offload=True, cpu_offload_params=False)[1], rel=0.05)
    assert formulas.model_states(cfg, "zero3", 8, offload="params").total == pytest.approx(
        zero3(n, largest, 8, 1, cpu_offload=True, cpu_offload_params=True)[1], rel=0.05)


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


@pytest.mark.parametrize("target, vocab", [(1e6, 512), (124e6, None), (1e9, None), (7e9, None), (70e9, None)])
def test_shape_for_params_lands_near_target(target, vocab):
    cfg = formulas.shape_for_params(target, vocab_size=vocab)
    assert 64 * cfg.n_layer <= cfg.d_model <= 128 * cfg.n_layer
    assert math.log(cfg.num_params() / target) == pytest.approx(0, abs=math.log(1.15))
    assert cfg.d_model % cfg.n_head == 0


def test_kv_cache_counts_kv_heads():
    mha = ModelConfig.preset("llama-7b")
    gqa = ModelConfig.preset("llama-7b", n_kv_head=8)
    assert formulas.kv_cache_bytes(mha, 1, 4096) == 2 * 32 * 4096 * 4096 * 2
    assert formulas.kv_cache_bytes(gqa, 1, 4096) == formulas.kv_cache_bytes(mha, 1, 4096) / 4
