"""The default MFU: a function of GPU, model width, sequence length, node count and recomputation, fitted
to published runs (generator/estimate/published.py). It reproduces them, BloombergGPT and TinyLlama
included, and docs/estimator.md prints what `python -m generator.estimate.published` measures."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from generator.estimate import mfu, parse_hardware, published
from generator.estimate.hardware import KNOWN_GPUS
from reference_llm.model.config import ModelConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "estimator.md"


@pytest.fixture(scope="module")
def errors() -> dict[str, published.RunError]:
    return {e.run.name: e for e in published.run_errors()}


@pytest.mark.parametrize("name", ["BloombergGPT 50B", "TinyLlama 1.1B"])
def test_bloomberggpt_and_tinyllama_within_35_percent(errors, name):
    """BloombergGPT (50B on 512 A100-40GB, full recomputation, 32.7% HFU) and TinyLlama (1.1B on 16
    A100-40GB, 56% MFU) sit at opposite ends of the published MFUs; one model predicts both."""
    assert abs(errors[name].error) <= 0.35, errors[name].error


def test_tinyllama_and_bloomberggpt_published_utilisation(errors):
    """The rows hold what the sources say: TinyLlama's 56% MFU, BloombergGPT's 102 TFLOP/s HFU (its
    4/3 recomputed FLOPs over 312 TFLOP/s)."""
    tiny = errors["TinyLlama 1.1B"]
    assert tiny.run.implied_mfu(tiny.estimate) == pytest.approx(0.56, abs=0.01)
    bloomberg = errors["BloombergGPT 50B"]
    hfu = bloomberg.run.implied_mfu(bloomberg.estimate) * 4 / 3
    assert hfu * 312 == pytest.approx(102, rel=0.05)


def test_every_published_run_within_40_percent_and_the_median_near_zero(errors):
    values = [e.error for e in errors.values()]
    assert max(abs(v) for v in values) < 0.40
    assert abs(statistics.median(values)) < 0.10
    assert statistics.median(abs(v) for v in values) < 0.12
    foundry = published.foundry_errors()
    assert statistics.median(abs(v) for v in foundry) < 0.12 and max(abs(v) for v in foundry) < 0.40


def test_the_constants_are_the_fit():
    """`python -m generator.estimate.published --fit` (least squares on log MFU) lands on the constants the
    estimator uses, to their rounding."""
    constants, bases = published.fit()
    assert constants["WIDTH_HALF"] == pytest.approx(mfu.WIDTH_HALF, rel=0.05)
    assert constants["ATTENTION_EFFICIENCY"] == pytest.approx(mfu.ATTENTION_EFFICIENCY, rel=0.02)
    assert constants["NODE_COST"] == pytest.approx(mfu.NODE_COST, rel=0.05)
    for gpu, base in bases.items():
        assert KNOWN_GPUS[gpu].mfu == pytest.approx(base, abs=0.005), gpu


def test_one_constant_per_gpu_would_fit_worse():
    """Negative control: the same runs with the width, attention and node terms switched off (each GPU
    at its best single constant) are predicted worse."""
    data = published.points()
    flat = published._loss(data, (0.0, 1e9, 0.0))  # width(d) = 1, attention = 1 + f, no node cost
    fitted = published._loss(data, (mfu.WIDTH_HALF, mfu.ATTENTION_EFFICIENCY, mfu.NODE_COST))
    assert fitted < 0.7 * flat


def test_mfu_moves_with_width_sequence_nodes_and_recomputation():
    base = KNOWN_GPUS["H100-SXM"].mfu
    small, large = ModelConfig.preset("gpt2-124m"), ModelConfig.preset("llama-13b")
    assert mfu.fitted_mfu(base, small, 1024, 1) < mfu.fitted_mfu(base, large, 1024, 1)
    assert mfu.fitted_mfu(base, large, 8192 // 2, 1) < mfu.fitted_mfu(base, large, 1024, 1)  # more attention
    assert (
        mfu.fitted_mfu(base, large, 4096, 64)
        < mfu.fitted_mfu(base, large, 4096, 8)
        < mfu.fitted_mfu(base, large, 4096, 1)
    )
    assert mfu.fitted_mfu(base, large, 4096, 1, recompute=4 / 3) == pytest.approx(
        0.75 * mfu.fitted_mfu(base, large, 4096, 1)
    )


def test_cpu_keeps_its_measured_base():
    cpu = parse_hardware("cpu", cpu_tflops=1.0)
    value, notes = mfu.default_mfu(cpu.gpu, ModelConfig.preset("demo"), 256, 1, "bfloat16")
    assert value == cpu.gpu.mfu and "not fitted" in notes[0]


def test_docs_print_what_the_module_measures(errors):
    """docs/estimator.md's table and summary are `python -m generator.estimate.published`'s output."""
    lines: list[str] = []
    published.main([], echo=lines.append)
    text = DOC.read_text(encoding="utf-8")
    for line in lines:
        if line:
            assert line in text, f"docs/estimator.md is out of date: {line}"
