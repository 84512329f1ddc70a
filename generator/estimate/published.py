"""Published training runs and llm-foundry's benchmark rows: what the default MFU is fitted to, and what
the estimator's GPU-hours are tested against (tests/generator/test_estimate_mfu.py, docs/estimator.md).

    python -m generator.estimate.published          # each run: published and estimated GPU-hours, error
    python -m generator.estimate.published --fit    # refit the MFU model's constants (generator/estimate/mfu.py)

A run's GPU-hours are what its authors published; its MFU is implied by them (training FLOPs, 6·N·D plus
attention, over GPU-seconds x peak). Where a paper leaves out the GPU count or the recomputation, the row
says what is assumed.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from generator.estimate import formulas, mfu
from generator.estimate.api import Estimate, RunSpec, estimate_run
from generator.estimate.hardware import KNOWN_GPUS
from generator.estimate.parse import parse_hardware
from reference_llm.model.config import ModelConfig

_L, _G = ModelConfig.llama_style, ModelConfig.gpt2_style


@dataclass(frozen=True)
class PublishedRun:
    name: str
    model: ModelConfig
    tokens: float
    hardware: str  # nodes x GPUs per node x GPU
    gpu_hours: float  # as published
    checkpointing: str  # formulas.CHECKPOINTING
    source: str

    def estimate(self) -> Estimate:
        """The estimator's figures for the run with every default (micro-batch 1: only the time matters)."""
        return estimate_run(
            RunSpec(
                self.model,
                parse_hardware(self.hardware),
                self.tokens,
                micro_batch=1,
                activation_checkpointing=self.checkpointing,
            )
        )

    def implied_mfu(self, est: Estimate) -> float:
        return est.flops_total / (est.peak_tflops * 1e12 * self.gpu_hours * 3600.0)


_LLAMA1 = "Touvron et al. 2023a (LLaMA), Table 15; 2048 A100-80GB, activations partly recomputed"
_LLAMA2 = "Touvron et al. 2023b (Llama 2), Table 2; GPU count not published, LLaMA's 2048 assumed"
_LLAMA3 = "Llama 3.1 model card; 16,384 H100 (Llama 3 paper, sec. 3.3), assumed for 8B and 70B too"
PUBLISHED_RUNS: tuple[PublishedRun, ...] = (
    PublishedRun(
        "LLaMA 7B",
        _L(vocab_size=32000, block_size=2048, n_layer=32, n_head=32, d_model=4096, ffn_hidden=11008),
        1.0e12,
        "256x8xA100-80GB",
        82_432,
        "selective",
        _LLAMA1,
    ),
    PublishedRun(
        "LLaMA 13B",
        _L(vocab_size=32000, block_size=2048, n_layer=40, n_head=40, d_model=5120, ffn_hidden=13824),
        1.0e12,
        "256x8xA100-80GB",
        135_168,
        "selective",
        _LLAMA1,
    ),
    PublishedRun(
        "LLaMA 33B",
        _L(vocab_size=32000, block_size=2048, n_layer=60, n_head=52, d_model=6656, ffn_hidden=17920),
        1.4e12,
        "256x8xA100-80GB",
        530_432,
        "selective",
        _LLAMA1,
    ),
    PublishedRun(
        "LLaMA 65B",
        _L(vocab_size=32000, block_size=2048, n_layer=80, n_head=64, d_model=8192, ffn_hidden=22016),
        1.4e12,
        "256x8xA100-80GB",
        1_022_362,
        "selective",
        _LLAMA1,
    ),
    PublishedRun(
        "Llama 2 7B",
        _L(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, d_model=4096, ffn_hidden=11008),
        2.0e12,
        "256x8xA100-80GB",
        184_320,
        "selective",
        _LLAMA2,
    ),
    PublishedRun(
        "Llama 2 13B",
        _L(vocab_size=32000, block_size=4096, n_layer=40, n_head=40, d_model=5120, ffn_hidden=13824),
        2.0e12,
        "256x8xA100-80GB",
        368_640,
        "selective",
        _LLAMA2,
    ),
    PublishedRun(
        "Llama 2 70B",
        _L(vocab_size=32000, block_size=4096, n_layer=80, n_head=64, n_kv_head=8, d_model=8192, ffn_hidden=28672),
        2.0e12,
        "256x8xA100-80GB",
        1_720_320,
        "selective",
        _LLAMA2,
    ),
    PublishedRun("Llama 3.1 8B", ModelConfig.preset("llama-8b"), 15e12, "2048x8xH100", 1_460_000, "none", _LLAMA3),
    PublishedRun("Llama 3.1 70B", ModelConfig.preset("llama-70b"), 15e12, "2048x8xH100", 7_000_000, "none", _LLAMA3),
    PublishedRun(
        "Llama 3.1 405B",
        _L(vocab_size=128256, block_size=8192, n_layer=126, n_head=128, n_kv_head=8, d_model=16384, ffn_hidden=53248),
        15.6e12,
        "2048x8xH100",
        30_840_000,
        "none",
        _LLAMA3,
    ),
    PublishedRun(
        "TinyLlama 1.1B",
        _L(vocab_size=32000, block_size=2048, n_layer=22, n_head=32, n_kv_head=4, d_model=2048, ffn_hidden=5632),
        300e9,
        "2x8xA100-40GB",
        3_456,
        "none",
        "TinyLlama README: 3,456 A100-40GB hours per 300B tokens on 16 GPUs, 56% MFU, no recomputation",
    ),
    PublishedRun(
        "BloombergGPT 50B",
        _G(vocab_size=131072, block_size=2048, n_layer=70, n_head=40, d_model=7680),
        569e9,
        "64x8xA100-40GB",
        53 * 24 * 512,
        "full",
        "Wu et al. 2023, sec. 3: ~53 days on 64 x 8 A100-40GB with activation checkpointing, "
        "102 TFLOP/s per GPU (32.7% HFU)",
    ),
    PublishedRun(
        "Pythia 1B",
        ModelConfig(
            vocab_size=50304, block_size=2048, n_layer=16, n_head=8, d_model=2048, position="rope", tie_embeddings=False
        ),
        300e9,
        "8x8xA100-40GB",
        4_830,
        "full",
        "Biderman et al. 2023 (Pythia), as cited by TinyLlama's README; GPT-NeoX with activation "
        "checkpointing; 64 GPUs assumed",
    ),
    PublishedRun(
        "MPT-7B",
        _G(vocab_size=50432, block_size=2048, n_layer=32, n_head=32, d_model=4096, bias=False),
        1e12,
        "55x8xA100-40GB",
        440 * 9.5 * 24,
        "full",
        "MosaicML MPT-7B model card: 440 A100-40GB for 9.5 days; llm-foundry's 7b recipe recomputes",
    ),
    PublishedRun(
        "MPT-1.3B",
        _G(vocab_size=50368, block_size=2048, n_layer=24, n_head=16, d_model=2048, bias=False),
        200e9,
        "55x8xA100-40GB",
        440 * 12,
        "none",
        "MPT-1.3B model card, as quoted in TinyLlama's README: 440 A100-40GB for about half a day",
    ),
    PublishedRun(
        "llm.c GPT-2 124M",
        ModelConfig.preset("gpt2-124m"),
        10e9,
        "8xA100-80GB",
        8 * 1.5,
        "none",
        "karpathy/llm.c discussion #481: 10B tokens in 90 minutes on one 8 x A100-80GB node",
    ),
    PublishedRun(
        "llm.c GPT-2 1.5B",
        ModelConfig.preset("gpt2-1.5b"),
        32e9,
        "8xH100",
        8 * 24,
        "none",
        "karpathy/llm.c discussion #677: 32B tokens in 24 hours on one 8 x H100 node",
    ),
    PublishedRun(
        "BLOOM 176B",
        _G(vocab_size=250880, block_size=2048, n_layer=70, n_head=112, d_model=14336),
        366e9,
        "48x8xA100-80GB",
        1_082_990,
        "full",
        "Luccioni et al. 2022: 1,082,990 GPU-hours on 384 A100-80GB; Megatron-DeepSpeed recomputation",
    ),
)


# llm-foundry's benchmark tables (mosaicml/llm-foundry, scripts/train/benchmarking/README.md): MPT shapes
# (d_model, n_layer, n_head; vocabulary 50368, tied, no biases), the MFU it reports (model FLOPs with
# attention, as here). The rows used: each size at sequence 2048 on one node and at the largest GPU count
# listed, and at 512 and 8192 tokens on one node where listed.
FOUNDRY_SHAPES = {
    "125m": (768, 12, 12),
    "350m": (1024, 24, 16),
    "760m": (1536, 24, 12),
    "1b": (2048, 24, 16),
    "3b": (2560, 32, 20),
    "7b": (4096, 32, 32),
    "13b": (5120, 40, 40),
    "30b": (7168, 48, 64),
    "70b": (8192, 80, 64),
}
# (size, sequence, GPUs, GPU, MFU, activation checkpointing)
FOUNDRY_ROWS: tuple[tuple[str, int, int, str, float, bool], ...] = (
    ("125m", 2048, 8, "A100-80GB", 0.4479, False),
    ("125m", 8192, 8, "A100-80GB", 0.4885, False),
    ("125m", 512, 8, "A100-80GB", 0.4256, False),
    ("125m", 32768, 8, "A100-80GB", 0.5271, False),
    ("350m", 2048, 8, "A100-80GB", 0.5162, False),
    ("350m", 8192, 8, "A100-80GB", 0.5380, False),
    ("350m", 512, 8, "A100-80GB", 0.5061, False),
    ("760m", 2048, 8, "A100-80GB", 0.5685, False),
    ("760m", 8192, 8, "A100-80GB", 0.5531, False),
    ("760m", 512, 8, "A100-80GB", 0.4507, False),
    ("1b", 2048, 8, "A100-80GB", 0.5986, False),
    ("1b", 8192, 8, "A100-80GB", 0.5669, False),
    ("1b", 512, 8, "A100-80GB", 0.6068, False),
    ("3b", 2048, 8, "A100-80GB", 0.6211, False),
    ("3b", 8192, 8, "A100-80GB", 0.5934, False),
    ("3b", 512, 8, "A100-80GB", 0.6371, False),
    ("7b", 2048, 8, "A100-80GB", 0.6423, False),
    ("7b", 8192, 8, "A100-80GB", 0.5447, True),
    ("7b", 4096, 8, "A100-80GB", 0.5484, True),
    ("13b", 2048, 8, "A100-80GB", 0.5957, False),
    ("13b", 8192, 8, "A100-80GB", 0.5607, True),
    ("30b", 2048, 8, "A100-80GB", 0.5530, True),
    ("30b", 8192, 8, "A100-80GB", 0.3938, True),
    ("70b", 2048, 64, "A100-80GB", 0.5333, True),
    ("70b", 2048, 32, "A100-80GB", 0.4856, True),
    ("125m", 2048, 8, "A100-40GB", 0.4275, False),
    ("125m", 2048, 128, "A100-40GB", 0.3886, False),
    ("125m", 8192, 8, "A100-40GB", 0.4694, False),
    ("350m", 2048, 8, "A100-40GB", 0.4917, False),
    ("350m", 2048, 128, "A100-40GB", 0.4561, False),
    ("760m", 2048, 8, "A100-40GB", 0.5289, False),
    ("760m", 2048, 128, "A100-40GB", 0.5073, False),
    ("1b", 2048, 8, "A100-40GB", 0.5623, False),
    ("1b", 2048, 128, "A100-40GB", 0.5441, False),
    ("3b", 2048, 8, "A100-40GB", 0.5782, False),
    ("3b", 2048, 128, "A100-40GB", 0.5480, False),
    ("7b", 2048, 8, "A100-40GB", 0.5092, True),
    ("7b", 2048, 128, "A100-40GB", 0.5014, True),
    ("13b", 2048, 16, "A100-40GB", 0.5250, True),
    ("13b", 2048, 128, "A100-40GB", 0.5193, True),
    ("13b", 2048, 8, "A100-40GB", 0.4394, True),
    ("30b", 2048, 128, "A100-40GB", 0.5225, True),
    ("30b", 2048, 32, "A100-40GB", 0.5174, True),
    ("70b", 2048, 128, "A100-40GB", 0.4891, True),
    ("70b", 2048, 64, "A100-40GB", 0.3587, True),
    ("760m", 2048, 8, "H100-SXM", 0.3490, False),
    ("760m", 2048, 32, "H100-SXM", 0.3757, False),
    ("760m", 512, 8, "H100-SXM", 0.4042, False),
    ("760m", 8192, 8, "H100-SXM", 0.3484, False),
    ("1b", 2048, 8, "H100-SXM", 0.4182, False),
    ("1b", 2048, 64, "H100-SXM", 0.4085, False),
    ("1b", 8192, 8, "H100-SXM", 0.3773, False),
    ("1b", 512, 8, "H100-SXM", 0.4321, False),
    ("3b", 2048, 64, "H100-SXM", 0.4080, False),
    ("3b", 2048, 16, "H100-SXM", 0.4373, False),
    ("3b", 1024, 8, "H100-SXM", 0.4620, False),
    ("3b", 8192, 8, "H100-SXM", 0.4031, False),
    ("7b", 2048, 8, "H100-SXM", 0.4644, False),
    ("7b", 8192, 8, "H100-SXM", 0.3714, True),
    ("7b", 4096, 8, "H100-SXM", 0.4042, True),
    ("13b", 2048, 8, "H100-SXM", 0.3979, False),
    ("13b", 2048, 64, "H100-SXM", 0.3986, False),
    ("13b", 4096, 8, "H100-SXM", 0.4160, True),
    ("30b", 2048, 8, "H100-SXM", 0.3811, True),
    ("30b", 2048, 32, "H100-SXM", 0.4392, True),
    ("70b", 2048, 64, "H100-SXM", 0.4257, True),
    ("70b", 2048, 32, "H100-SXM", 0.3615, True),
)
FOUNDRY_WEIGHT = 0.25  # a benchmark row counts a quarter of a published run in the fit


@dataclass(frozen=True)
class Point:
    """One observation of MFU, in the terms of the MFU model."""

    gpu: str
    d_model: int
    share: float  # attention / dense FLOPs
    nodes: int
    recompute: float
    mfu: float
    weight: float


def foundry_model(size: str, seq_len: int) -> ModelConfig:
    d_model, n_layer, n_head = FOUNDRY_SHAPES[size]
    return _G(vocab_size=50368, block_size=seq_len, n_layer=n_layer, n_head=n_head, d_model=d_model, bias=False)


def points() -> list[Point]:
    """The published runs (weight 1) and llm-foundry's rows (FOUNDRY_WEIGHT) as MFU observations."""
    out = []
    for run in PUBLISHED_RUNS:
        hardware, seq = parse_hardware(run.hardware), run.model.block_size
        flops = run.model.flops_per_token(seq) * run.tokens
        observed = flops / (hardware.gpu.bf16_tflops * 1e12 * run.gpu_hours * 3600.0)
        out.append(
            Point(
                hardware.gpu.name,
                run.model.d_model,
                mfu.attention_share(run.model, seq),
                hardware.nodes,
                formulas.recompute_flops_factor(run.model, seq, run.checkpointing),
                observed,
                1.0,
            )
        )
    for size, seq, gpus, gpu, observed, recomputes in FOUNDRY_ROWS:
        model = foundry_model(size, seq)
        out.append(
            Point(
                gpu,
                model.d_model,
                mfu.attention_share(model, seq),
                max(1, gpus // 8),
                formulas.recompute_flops_factor(model, seq, "full" if recomputes else "none"),
                observed,
                FOUNDRY_WEIGHT,
            )
        )
    return out


# ----------------------------------------------------------------------------------------------------
# The fit
# ----------------------------------------------------------------------------------------------------


def _shape(point: Point, width_half: float, attention: float, node_cost: float) -> float:
    """The MFU model without its base, for constants other than the module's."""
    width = point.d_model / (point.d_model + width_half)
    attn = (1.0 + point.share) / (1.0 + point.share / attention)
    return width * attn / (1.0 + node_cost * math.log2(point.nodes)) / point.recompute


def _bases(data: Sequence[Point], constants: Sequence[float]) -> dict[str, float]:
    """The best base per GPU for fixed shape constants: the weighted geometric mean of observed / shape."""
    out = {}
    for gpu in sorted({p.gpu for p in data}):
        rows = [p for p in data if p.gpu == gpu]
        total = sum(p.weight for p in rows)
        out[gpu] = math.exp(sum(p.weight * math.log(p.mfu / _shape(p, *constants)) for p in rows) / total)
    return out


def _loss(data: Sequence[Point], constants: Sequence[float]) -> float:
    if constants[0] <= 0 or constants[1] <= 0.05 or constants[2] < 0:
        return math.inf
    bases = _bases(data, constants)
    return sum(p.weight * math.log(bases[p.gpu] * _shape(p, *constants) / p.mfu) ** 2 for p in data)


def fit(data: Sequence[Point] | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Least squares on log MFU: (WIDTH_HALF, ATTENTION_EFFICIENCY, NODE_COST) by a compass search (the
    bases are solved exactly for each), then the bases. Returns (constants, bases by GPU)."""
    data = points() if data is None else data
    x = [300.0, 0.7, 0.05]
    steps = [50.0, 0.05, 0.01]
    best = _loss(data, x)
    while max(s / max(abs(v), 1e-9) for s, v in zip(steps, x)) > 1e-5:
        improved = False
        for i in range(3):
            for sign in (1.0, -1.0):
                trial = list(x)
                trial[i] += sign * steps[i]
                value = _loss(data, trial)
                if value < best:
                    x, best, improved = trial, value, True
        if not improved:
            steps = [s / 2 for s in steps]
    constants = {"WIDTH_HALF": x[0], "ATTENTION_EFFICIENCY": x[1], "NODE_COST": x[2]}
    return constants, _bases(data, x)


# ----------------------------------------------------------------------------------------------------
# Errors against the published runs
# ----------------------------------------------------------------------------------------------------


@dataclass
class RunError:
    run: PublishedRun
    estimate: Estimate

    @property
    def error(self) -> float:
        """Estimated GPU-hours / published - 1."""
        return self.estimate.gpu_hours / self.run.gpu_hours - 1.0


def run_errors() -> list[RunError]:
    return [RunError(run, run.estimate()) for run in PUBLISHED_RUNS]


def summary(errors: Sequence[RunError]) -> str:
    values = [e.error for e in errors]
    worst = max(errors, key=lambda e: abs(e.error))
    return (
        f"median error {statistics.median(values):+.1%}, median absolute error "
        f"{statistics.median(abs(v) for v in values):.1%}, worst {worst.error:+.1%} ({worst.run.name})"
    )


def markdown_table(errors: Sequence[RunError]) -> str:
    lines = [
        "| Run | params | tokens | hardware | published GPU-hours | estimated | error | implied MFU | model MFU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in errors:
        est, run = e.estimate, e.run
        lines.append(
            f"| {run.name} | {est.params / 1e9:.2f}B | {run.tokens / 1e9:,.0f}B | {est.hardware} | "
            f"{run.gpu_hours:,.0f} | {est.gpu_hours:,.0f} | {e.error:+.1%} | "
            f"{run.implied_mfu(est):.3f} | {est.mfu:.3f} |"
        )
    return "\n".join(lines)


def foundry_errors() -> list[float]:
    """Model MFU / reported MFU - 1 for each llm-foundry row."""
    out = []
    for size, seq, gpus, gpu, observed, recomputes in FOUNDRY_ROWS:
        model = foundry_model(size, seq)
        nodes = max(1, gpus // 8)
        recompute = formulas.recompute_flops_factor(model, seq, "full" if recomputes else "none")
        predicted = mfu.fitted_mfu(KNOWN_GPUS[gpu].mfu, model, seq, nodes, recompute)
        out.append(observed / predicted - 1.0)
    return out


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(prog="python -m generator.estimate.published", description=__doc__.split("\n")[0])
    parser.add_argument("--fit", action="store_true", help="refit the MFU model's constants and print them")
    args = parser.parse_args(argv)
    if args.fit:
        constants, bases = fit()
        echo(", ".join(f"{k} = {v:.4g}" for k, v in constants.items()))
        echo(", ".join(f"{k}: {v:.3f}" for k, v in bases.items()))
        return
    errors = run_errors()
    echo(markdown_table(errors))
    echo("")
    echo(f"Published runs: {summary(errors)}")
    foundry = foundry_errors()
    echo(
        f"llm-foundry rows ({len(foundry)}): median absolute error {statistics.median(map(abs, foundry)):.1%}, "
        f"worst {max(foundry, key=abs):+.1%}"
    )


if __name__ == "__main__":
    main()
