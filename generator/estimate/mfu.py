"""The default model-FLOPs utilisation (MFU): a function of the GPU, the model's width, the sequence
length, the node count and recomputation, fitted to published runs.

    MFU = base(GPU) x width(d) x attention(s, d) x nodes(n) / recompute  [x the adjustments below]

- base: what the GPU family reaches on a wide model on one node (fitted per family, `hardware.GPUSpec.mfu`).
- width(d) = d / (d + WIDTH_HALF): narrow models run small matmuls, and the elementwise work (norms,
  activations, residuals, not counted as model FLOPs) weighs more against them.
- attention: the attention FLOPs that the estimate counts (12·L·d·s per token, PaLM appendix B) run at
  ATTENTION_EFFICIENCY of the matmul rate; with f = attention / dense FLOPs the step takes
  (1 + f / ATTENTION_EFFICIENCY) instead of (1 + f) matmul-time units. f grows with s / d.
- nodes(n) = 1 / (1 + NODE_COST · log2(n)): gradient and parameter traffic between machines, which
  overlaps with compute less the more machines there are.
- recompute: MFU counts model FLOPs only, so recomputed activations divide it by the hardware / model
  FLOPs ratio (`formulas.recompute_flops_factor`: 4/3 for full recomputation) [PaLM appendix B].

The constants were fitted by least squares on log MFU over `published.PUBLISHED_RUNS` (weight 1) and
`published.FOUNDRY_ROWS`, llm-foundry's benchmark tables (weight 1/4); `python -m
generator.estimate.published` refits them and prints every run with its error (docs/estimator.md).
Adjustments with a formula or a stated assumption follow (`default_mfu`): the pipeline bubble, fp8,
offload. A CPU is not fitted: its base is measured on the demo's shapes and used as it is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from generator.estimate.formulas import pipeline_bubble_fraction
from generator.estimate.precision import FLOAT8
from reference_llm.model.config import ModelConfig

if TYPE_CHECKING:  # hardware imports nothing from here; the annotation only needs the name
    from generator.estimate.hardware import GPUSpec

# Fitted constants (see the module docstring; `published.fit` reproduces them).
WIDTH_HALF = 280.0  # d_model at which width(d) = 1/2
ATTENTION_EFFICIENCY = 0.70  # counted attention FLOPs per second, relative to matmul FLOPs per second
NODE_COST = 0.07  # MFU lost per doubling of the node count, to first order
# Per-family bases (also fitted): A100-80GB 0.78, A100-40GB 0.70 (less memory: smaller micro-batches,
# more sharding, as llm-foundry's own tables show), H100 0.54. They live in hardware.KNOWN_GPUS.


def attention_share(model: ModelConfig, seq_len: int) -> float:
    """f: attention FLOPs over dense (6·N) FLOPs per training token, 12·L·d·s / 6·N."""
    dense = model.flops_per_token(seq_len) - 12.0 * model.n_layer * model.d_model * seq_len
    return 12.0 * model.n_layer * model.d_model * seq_len / dense


def shape_factors(d_model: int, share: float, nodes: int) -> tuple[float, float, float]:
    """(width, attention, nodes) factors of the MFU model for a model of width `d_model` whose attention
    FLOPs are `share` of its dense FLOPs, on `nodes` machines."""
    width = d_model / (d_model + WIDTH_HALF)
    attention = (1.0 + share) / (1.0 + share / ATTENTION_EFFICIENCY)
    scale = 1.0 / (1.0 + NODE_COST * math.log2(max(nodes, 1)))
    return width, attention, scale


def fitted_mfu(base: float, model: ModelConfig, seq_len: int, nodes: int, recompute: float = 1.0) -> float:
    """The fitted MFU of `model` at `seq_len` on `nodes` machines of a family whose base is `base`,
    with `recompute` = hardware / model FLOPs (1 without recomputation)."""
    width, attention, scale = shape_factors(model.d_model, attention_share(model, seq_len), nodes)
    return base * width * attention * scale / recompute


def default_mfu(
    gpu: GPUSpec,
    model: ModelConfig,
    seq_len: int,
    nodes: int,
    precision: str,
    recompute: float = 1.0,
    pp: int = 1,
    microbatches: int = 1,
    offload: str | None = None,
) -> tuple[float, list[str]]:
    """The MFU to assume when none is given, and one line per factor.

    The fitted model above (GPUs; a CPU keeps its measured base), then:
    - fp8: x0.7 of the fp8 peak, i.e. 1.4x bf16 throughput (only the linear layers run in fp8); an
      llmgen assumption, in line with the 1.3-1.5x speed-ups NVIDIA reports for Transformer Engine.
    - pipeline: x 1/(1 + (p-1)/m) for the 1F1B bubble [Narayanan et al. 2021, sec. 2.2].
    - offload: x0.7 optimizer, x0.5 params: host transfers and the CPU step; an llmgen assumption.
    Tensor parallelism inside a node, ZeRO and FSDP run at the fitted figure: the runs it is fitted to
    used them.
    """
    if gpu.is_cpu:
        mfu = gpu.mfu / recompute
        notes = [f"base {gpu.mfu:.2f} (this CPU's eager training on the demo's shapes; not fitted)"]
    else:
        width, attention, scale = shape_factors(model.d_model, attention_share(model, seq_len), nodes)
        mfu = gpu.mfu * width * attention * scale / recompute
        notes = [
            f"base {gpu.mfu:.2f} ({gpu.name}, fitted to published runs)",
            f"width {model.d_model}: x{width:.2f}",
            f"attention at sequence {seq_len}: x{attention:.2f}",
            f"{nodes} node{'s' if nodes > 1 else ''}: x{scale:.2f}",
        ]
    if recompute > 1.0:
        notes.append(f"recomputation: x{1 / recompute:.2f}")
    if precision == FLOAT8:
        mfu *= 0.7
        notes.append("fp8: x0.70 of the fp8 peak (~1.4x bf16 speed)")
    if pp > 1:
        bubble = pipeline_bubble_fraction(pp, microbatches)
        mfu /= 1.0 + bubble
        notes.append(f"pipeline bubble (p-1)/m = {bubble:.2f}: x{1 / (1 + bubble):.2f}")
    if offload:
        factor = 0.7 if offload == "optimizer" else 0.5
        mfu *= factor
        notes.append(f"{offload} offload: x{factor}")
    return mfu, notes
