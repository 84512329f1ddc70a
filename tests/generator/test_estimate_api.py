"""RunSpec, estimate_run, choose_parallelism, build_model and budget plans: the seam `llmgen new` uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.errors import EstimateError
from generator.estimate import (
    RunSpec,
    build_model,
    choose_parallelism,
    estimate_run,
    formulas,
    mfu,
    nearest_preset,
    parse_budget,
    parse_hardware,
    plan_budget,
)
from generator.estimate.precision import FLOAT8
from reference_llm.model import PRESETS, ModelConfig


@pytest.fixture(autouse=True)
def _fixed_cpu_peak(monkeypatch):
    monkeypatch.setenv("LLMGEN_CPU_TFLOPS", "0.5")


def test_time_and_cost_follow_flops_peak_and_mfu():
    cfg = ModelConfig.preset("gpt2-124m")
    hw = parse_hardware("8xA100-80GB")
    est = estimate_run(RunSpec(cfg, hw, 10e9, mfu=0.5, price=2.0, micro_batch=8))
    expected_hours = est.flops_total / (8 * 312e12 * 0.5) / 3600
    assert est.wall_hours == pytest.approx(expected_hours)
    assert est.gpu_hours == pytest.approx(8 * expected_hours)
    assert est.cost_usd == pytest.approx(2.0 * est.gpu_hours)
    assert est.params == cfg.num_params() and est.params_non_embedding == cfg.num_params(include_embeddings=False)


def test_default_mfu_is_printed_and_adjusted_for_recompute_and_pipeline():
    cfg = ModelConfig.preset("llama-7b")
    hw = parse_hardware("4x8xH100")
    spec = RunSpec(cfg, hw, 1e12, parallelism="zero3", micro_batch=1)
    plain = estimate_run(spec)
    fitted = mfu.fitted_mfu(hw.gpu.mfu, cfg, cfg.block_size, hw.nodes)
    assert plain.mfu == pytest.approx(fitted)
    assert any("MFU" in note and f"{hw.gpu.mfu:.2f}" in note and "4 nodes" in note for note in plain.assumptions)
    full = estimate_run(spec.but(activation_checkpointing="full"))
    assert full.mfu == pytest.approx(fitted * 3 / 4)  # 4/3 more hardware FLOPs for the same model FLOPs
    # Pipeline stages as reference_llm runs them: one per GPU, under fsdp (check_parallel_layout).
    one_node = parse_hardware("4xH100")
    piped = estimate_run(spec.but(hardware=one_node, parallelism="fsdp", pp=4, grad_accum=8))
    fitted_one_node = mfu.fitted_mfu(one_node.gpu.mfu, cfg, cfg.block_size, one_node.nodes)
    assert piped.mfu == pytest.approx(fitted_one_node / (1 + 3 / 8))
    assert estimate_run(spec.but(mfu=0.55)).mfu == 0.55


def test_memory_breakdown_adds_up_and_fits_against_usable_memory():
    est = estimate_run(
        RunSpec(ModelConfig.preset("llama-7b"), parse_hardware("8xH100"), 1e9, parallelism="ddp", micro_batch=1)
    )
    parts = est.memory_breakdown_gib
    assert set(parts) == {"weights", "gradients", "optimizer", "activations", "logits", "buffers"}
    assert est.memory_per_gpu_gib == pytest.approx(sum(parts.values()))
    assert not est.fits  # 7B with replicated AdamW states needs > 100 GiB
    assert est.memory_per_gpu_gib > est.memory_usable_gib
    assert est.suggestions and est.suggestions[0].startswith("--parallelism zero")


def _apply(suggestion: str, spec: RunSpec) -> RunSpec:
    """Apply a suggestion's flags ("--micro-batch 1 --grad-accum 2 (76.1 GiB per GPU)") to `spec`."""
    names = {
        "--micro-batch": ("micro_batch", int),
        "--grad-accum": ("grad_accum", int),
        "--tp": ("tp", int),
        "--activation-checkpointing": ("activation_checkpointing", str),
        "--parallelism": ("parallelism", str),
        "--offload": ("offload", str),
        "--hardware": ("hardware", parse_hardware),
    }
    words = suggestion.split(" (")[0].split()
    changed = {}
    for flag, value in zip(words[::2], words[1::2]):
        key, kind = names[flag]
        changed[key] = kind(value)
    return spec.but(**changed)


def test_suggestions_each_make_it_fit():
    spec = RunSpec(ModelConfig.preset("llama-8b"), parse_hardware("4x8xH100"), 1e12, parallelism="zero3", micro_batch=2)
    est = estimate_run(spec)
    assert not est.fits
    assert any(s.startswith("--activation-checkpointing") for s in est.suggestions)
    assert any(s.startswith("--micro-batch") for s in est.suggestions)
    for suggestion in est.suggestions:
        assert estimate_run(_apply(suggestion, spec)).fits, suggestion


def test_more_gpus_suggested_when_sharding_needs_them():
    spec = RunSpec(
        ModelConfig.preset("llama-70b"),
        parse_hardware("8xH100"),
        1e12,
        parallelism="fsdp",
        micro_batch=1,
        activation_checkpointing="full",
    )
    est = estimate_run(spec)
    assert not est.fits  # 70B x 16 B/param / 8 = 140 GB of states per GPU
    grown = [s for s in est.suggestions if s.startswith("--hardware")]
    assert grown
    assert estimate_run(_apply(grown[0], spec)).fits


def test_choose_parallelism():
    small, big = ModelConfig.preset("gpt2-124m"), ModelConfig.preset("llama-8b")
    assert choose_parallelism(RunSpec(small, parse_hardware("cpu")))[0] == "single"
    assert choose_parallelism(RunSpec(big, parse_hardware("1xH100")))[0] == "single"
    strategy, reason = choose_parallelism(RunSpec(small, parse_hardware("8xH100")))
    assert strategy == "ddp" and "replicated on every GPU" in reason
    strategy, reason = choose_parallelism(
        RunSpec(big, parse_hardware("8xH100"), micro_batch=1, activation_checkpointing="full")
    )
    assert strategy in ("zero1", "zero2") and "ddp would need" in reason
    strategy, _ = choose_parallelism(
        RunSpec(
            ModelConfig.preset("llama-70b"), parse_hardware("8xH100"), micro_batch=1, activation_checkpointing="full"
        )
    )
    assert strategy == "fsdp"


def test_auto_picks_strategy_and_micro_batch_that_fit():
    spec = RunSpec(ModelConfig.preset("llama-8b"), parse_hardware("8xH100"), activation_checkpointing="full")
    assert spec.tokens == "chinchilla" and spec.parallelism == "auto" and spec.micro_batch is None
    est = estimate_run(spec)
    assert est.fits and est.strategy in ("zero1", "zero2", "fsdp")
    assert est.tokens == pytest.approx(20 * est.params)
    assert est.micro_batch >= 1 and est.micro_batch & (est.micro_batch - 1) == 0
    bigger = estimate_run(spec.but(tokens=1e9, parallelism=est.strategy, micro_batch=est.micro_batch * 2))
    assert est.micro_batch == 32 or not bigger.fits


def test_cpu_run_is_single_and_free():
    est = estimate_run(RunSpec(ModelConfig.preset("demo"), parse_hardware("cpu"), 1e6, micro_batch=8))
    assert est.strategy == "single" and est.cost_usd == 0 and est.fits
    assert est.wall_hours == est.gpu_hours
    assert any("cpu" in note for note in est.assumptions)


def test_inference_memory_includes_kv_cache():
    cfg = ModelConfig.preset("llama-8b")
    est = estimate_run(
        RunSpec(cfg, parse_hardware("1xH100"), 1e9, micro_batch=1, seq_len=8192, activation_checkpointing="full")
    )
    assert est.inference_gib["kv_cache"] == pytest.approx(formulas.kv_cache_bytes(cfg, 1, 8192) / 2**30)
    assert est.inference_gib["weights_bf16"] == pytest.approx(2 * cfg.num_params() / 2**30)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(tp=16), "--tp"),
        (dict(tp=3), "--tp"),
        (dict(pp=0), "--pp"),
        (dict(parallelism="zero4"), "--parallelism"),
        (dict(parallelism="ddp", offload="optimizer"), "--offload"),
        (dict(parallelism="zero2", offload="params"), "--offload"),
        (dict(precision="fp16"), "--precision"),
        (dict(precision="bf16"), "--precision"),
        (dict(micro_batch=0), "--micro-batch"),
        (dict(tokens="lots"), "--tokens"),
        (dict(seq_len=100000), "--seq-len"),
        (dict(activation_checkpointing="some"), "--activation-checkpointing"),
        (dict(mfu=1.5), "--mfu"),
        (dict(price=-1.0), "--price"),
        (dict(parallelism="single"), "--parallelism"),
    ],
)
def test_bad_run_options_are_one_line_errors(kwargs, flag):
    with pytest.raises(EstimateError, match=flag) as err:
        estimate_run(RunSpec(ModelConfig.preset("llama-7b"), parse_hardware("8xH100"), **{"tokens": 1e9, **kwargs}))
    assert "\n" not in str(err.value)


def test_fp8_needs_fp8_hardware_and_cpu_refuses_gpu_options():
    cfg = ModelConfig.preset("gpt2-124m")
    with pytest.raises(EstimateError, match="no fp8 tensor cores"):
        estimate_run(RunSpec(cfg, parse_hardware("8xA100"), 1e9, precision=FLOAT8))
    fp8 = estimate_run(RunSpec(cfg, parse_hardware("8xH100"), 1e9, precision=FLOAT8, micro_batch=1))
    assert fp8.peak_tflops == 1979.0
    with pytest.raises(EstimateError, match="cpu"):
        estimate_run(RunSpec(cfg, parse_hardware("cpu"), 1e9, parallelism="zero2"))


def test_build_model():
    assert build_model(preset="llama-7b") == ModelConfig.preset("llama-7b")
    assert build_model().name == "demo"
    shaped = build_model(params=7e9)
    assert abs(shaped.num_params() / 7e9 - 1) < 0.05
    custom = build_model(layers=4, d_model=256, heads=4, kv_heads=2, vocab=1000, seq_len=128, tied=True)
    shape = (custom.n_layer, custom.d_model, custom.n_kv_head, custom.vocab_size, custom.block_size)
    assert shape == (4, 256, 2, 1000, 128)
    assert custom.tie_embeddings
    gpt = build_model(preset="llama-7b", arch="gpt2")
    assert gpt.arch == "gpt2" and gpt.d_model == 4096
    assert build_model(arch="gpt2", layers=2).arch == "gpt2"


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(heads=7, d_model=512), "--heads 7 must divide --d-model 512"),
        (dict(heads=8, kv_heads=3), "--kv-heads 3 must divide --heads 8"),
        (dict(layers=0), "--layers"),
        (dict(d_model=-64), "--d-model"),
        (dict(preset="llama-9b"), "--model"),
        (dict(preset="demo", params=1e9), "--model or --params"),
        (dict(arch="bert"), "--arch"),
    ],
)
def test_bad_shapes_name_the_flag(kwargs, flag):
    with pytest.raises(EstimateError, match=flag):
        build_model(**kwargs)


def test_budget_plan_is_compute_optimal_with_rule_beside_it():
    hw = parse_hardware("8xH100")
    plan = plan_budget(parse_budget("$50k"), hw, mfu=0.4, peak_tflops=989.0)
    gpu_hours = 50e3 / hw.gpu.price_per_hour
    assert plan.gpu_hours == pytest.approx(gpu_hours)
    assert plan.flops == pytest.approx(gpu_hours * 3600 * 989e12 * 0.4)
    assert 6 * plan.params * plan.tokens == pytest.approx(plan.flops)
    assert plan.tokens_rule == pytest.approx(20 * plan.params_rule)
    assert plan.preset in PRESETS
    assert plan.preset == nearest_preset(plan.params).name
    d = plan.to_dict()
    assert "Hoffmann" in d["compute_optimal"]["fit"] and d["nearest_preset"]["name"] == plan.preset


def test_time_budget_brings_its_own_hardware_and_laptop_is_small():
    plan = plan_budget(parse_budget("8xH100 for 14 days"), parse_hardware("cpu"), mfu=0.4, peak_tflops=989.0)
    assert plan.hardware == "8xH100-SXM" and plan.wall_hours == pytest.approx(14 * 24)
    laptop = parse_budget("laptop")
    small = plan_budget(laptop, laptop.hardware, mfu=0.35, peak_tflops=0.5)
    assert small.params < 10e6 and small.cost_usd == 0
    assert any("10 minutes" in note for note in small.notes)


def test_budget_plan_defaults_to_the_peak_and_the_mfu_of_the_preset_it_buys():
    """The default MFU depends on the model, so the plan uses the one of the preset the compute buys: that
    preset's own estimate then spends exactly the budget."""
    hw = parse_hardware("8xA100")
    plan = plan_budget(parse_budget("1000 gpu-hours"), hw)
    preset = ModelConfig.preset(plan.preset)
    assert plan.mfu == pytest.approx(mfu.fitted_mfu(hw.gpu.mfu, preset, preset.block_size, hw.nodes))
    assert plan.flops == pytest.approx(1000 * 3600 * 312e12 * plan.mfu)
    est = estimate_run(RunSpec(preset, hw, plan.preset_tokens, micro_batch=1))
    assert est.gpu_hours == pytest.approx(1000)


def test_the_python_example_in_the_docs_runs():
    """docs/estimator.md's "From Python" example, executed as written."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "estimator.md").read_text(encoding="utf-8")
    example = text.split("From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(example, "docs/estimator.md", "exec"), namespace)
    est, spec = namespace["est"], namespace["spec"]
    assert (est.strategy, est.tokens, est.activation_checkpointing) == ("zero3", 1e12, "full")
    assert est.gpu_hours == estimate_run(spec).gpu_hours and isinstance(spec, RunSpec)


# ---- The estimate never contradicts itself ---------------------------------------------------------------


def test_params_means_the_count_given():
    """--params N: 6·N·D uses N itself, and the shape sized for memory is within 1% of it."""
    for target in (124e6, 1e9, 7e9, 70e9, 175e9):
        model = build_model(params=target)
        assert abs(model.num_params() / target - 1) <= 0.01, (target, model.num_params())
        est = estimate_run(RunSpec(model, parse_hardware("64x8xA100"), 300e9, params=target, micro_batch=1))
        assert est.flops == pytest.approx(6 * target * 300e9)
        assert est.flops_params == target and "as given" in est.flops_params_source
    gpt3 = estimate_run(
        RunSpec(build_model(params=175e9), parse_hardware("64x8xA100"), 300e9, params=175e9, micro_batch=1)
    )
    assert gpt3.flops == pytest.approx(3.14e23, rel=0.01)  # GPT-3's published 6ND (Brown et al. 2020, Table D.1)


def test_auto_reason_states_the_memory_of_the_run_as_estimated():
    """The reason names the final micro-batch's memory and the same usable figure as the memory row."""
    for hardware, preset in (("8xH100", "gpt2-124m"), ("8xH100", "llama-8b"), ("8xA100-40GB", "llama-7b")):
        est = estimate_run(RunSpec(ModelConfig.preset(preset), parse_hardware(hardware), 1e9))
        assert f"{est.memory_per_gpu_gib:.1f} GiB per GPU at micro-batch {est.micro_batch}" in est.strategy_reason
        assert f"{est.memory_usable_gib:.1f} GiB usable" in est.strategy_reason


def test_a_run_of_years_suggests_the_hardware_that_finishes_it_in_a_month():
    spec = RunSpec(ModelConfig.preset("llama-70b"), parse_hardware("8xH100"), 1.4e12, micro_batch=1)
    est = estimate_run(spec)
    assert est.wall_hours > 365 * 24 and est.faster is not None
    hardware = parse_hardware(est.faster.split()[1])
    faster = estimate_run(spec.but(hardware=hardware, parallelism=est.strategy))
    assert faster.wall_hours <= 30 * 24 and f"about {faster.wall_hours / 24:.1f} days" in est.faster
    assert estimate_run(spec.but(tokens=1e9)).faster is None  # a short run needs no suggestion
