"""Every formula the estimator uses, each with its source.

Units: counts are plain numbers, FLOPs are floating-point operations (a multiply-add is 2), memory is
bytes unless a name says GiB. Symbols follow Korthikanti et al. (2022): s sequence length, b micro-batch,
h hidden size (d_model), a attention heads, L layers, t tensor-parallel degree, V vocabulary.

Sources:
- [Kaplan] Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1 (6N FLOPs per token,
  non-embedding parameters).
- [PaLM] Chowdhery et al. 2022, "PaLM", appendix B (6N + 12·L·H·Q·T FLOPs per token with H heads of
  size Q, i.e. 12·L·h·s for the attention term; MFU vs HFU).
- [Hoffmann] Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla), Table 3.
- [ZeRO] Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
  Models", sec. 3.1 and 5 (2+2+12 bytes per parameter, per-stage partitioning).
- [DeepSpeed] deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs and
  stage3.estimate_zero3_model_states_mem_needs (DeepSpeed 0.19), the engine's own accounting.
- [FSDP2] PyTorch `torch.distributed.fsdp.fully_shard` with MixedPrecisionPolicy(param_dtype=bf16,
  reduce_dtype=fp32): fp32 sharded parameters, gradients and optimizer states; bf16 all-gathered units.
- [Korthikanti] Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", sec. 4 (activation memory sbh(34 + 5as/h) per layer and its TP/SP/recompute variants).
- [Narayanan] Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters
  Using Megatron-LM", sec. 2.2 (pipeline bubble (p-1)/m; 1F1B keeps p micro-batches in flight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from generator.estimate.precision import FLOAT8
from generator.units import si
from reference_llm.config import Dtype, Strategy
from reference_llm.model.config import ModelConfig

GIB = 2**30
# Bytes per saved activation element, by precision (float8 keeps bf16 activations).
ACT_BYTES: dict[str, int] = {Dtype.BFLOAT16: 2, FLOAT8: 2, Dtype.FLOAT32: 4}
CHECKPOINTING = ("none", "selective", "full")


# ----------------------------------------------------------------------------------------------------
# Parameters and FLOPs
# ----------------------------------------------------------------------------------------------------


def matmul_params(config: ModelConfig) -> int:
    """Weights that take part in a matmul: every block weight plus the output head (an embedding lookup
    is not a matmul) [Kaplan sec. 2.1]. The same N that `ModelConfig.flops_per_token` uses."""
    return config.num_params(include_embeddings=False) + config.vocab_size * config.d_model


def training_flops(config: ModelConfig, tokens: float, seq_len: int) -> tuple[float, float]:
    """(6·N·D, attention FLOPs) for D training tokens.

    6·N·D: forward 2N and backward 4N per token [Kaplan]. Attention: QK^T and AV cost 2·s·h each per
    token and layer forward, causal masking not discounted, times 3 for forward+backward: 12·L·h·s·D
    [PaLM appendix B]. Their sum equals `config.flops_per_token(seq_len) * D`.
    """
    dense = 6.0 * matmul_params(config) * tokens
    attention = 12.0 * config.n_layer * config.d_model * seq_len * tokens
    return dense, attention


def recompute_flops_factor(config: ModelConfig, seq_len: int, checkpointing: str) -> float:
    """Hardware FLOPs / model FLOPs when activations are recomputed.

    Full recomputation runs every forward twice: 8N instead of 6N (plus the attention forward again),
    so hardware FLOPs are 4/3 of model FLOPs [PaLM appendix B, HFU vs MFU]. Selective recomputation
    redoes only the attention-score part, QK^T and AV forward: 4·L·h·s per token [Korthikanti sec. 5].
    """
    per_token = config.flops_per_token(seq_len)
    attention_forward = 4.0 * config.n_layer * config.d_model * seq_len
    extra = {"none": 0.0, "selective": attention_forward, "full": per_token / 3.0}[checkpointing]
    return (per_token + extra) / per_token


def pipeline_bubble_fraction(pp: int, microbatches: int) -> float:
    """Idle fraction of a 1F1B pipeline relative to its busy time: (p - 1) / m [Narayanan sec. 2.2]."""
    return (pp - 1) / microbatches


def gpu_seconds(flops: float, peak_tflops: float, mfu: float) -> float:
    """Device-seconds for `flops` at `mfu` of `peak_tflops` (MFU as defined in [PaLM appendix B])."""
    return flops / (peak_tflops * 1e12 * mfu)


# ----------------------------------------------------------------------------------------------------
# Compute-optimal models [Hoffmann]
# ----------------------------------------------------------------------------------------------------

# Hoffmann et al. 2022, Table 3 (Approach 1): compute-optimal (FLOPs, parameters, tokens).
CHINCHILLA_TABLE3: tuple[tuple[float, float, float], ...] = (
    (1.92e19, 400e6, 8.0e9),
    (1.21e20, 1e9, 20.2e9),
    (1.23e22, 10e9, 205.1e9),
    (5.76e23, 67e9, 1.5e12),
    (3.85e24, 175e9, 3.7e12),
    (9.90e24, 280e9, 5.9e12),
    (3.43e25, 520e9, 11.0e12),
    (1.27e26, 1e12, 21.2e12),
    (1.30e28, 10e12, 216.2e12),
)
TOKENS_PER_PARAM = 20.0  # the rule of thumb read off the same table: D ≈ 20·N


def chinchilla_optimal(flops: float) -> tuple[float, float]:
    """(N_opt, D_opt) for a compute budget C, from [Hoffmann] Table 3 (Approach 1, N_opt ∝ C^0.50).

    Log-log interpolation between the table's rows; outside it, the end segment's slope is extended
    (about 0.50, the paper's exponent a). D_opt = C / (6·N_opt), so C = 6·N·D holds exactly.
    """
    rows = CHINCHILLA_TABLE3
    log_c = math.log(flops)
    if log_c <= math.log(rows[1][0]):
        lo, hi = rows[0], rows[1]
    elif log_c >= math.log(rows[-2][0]):
        lo, hi = rows[-2], rows[-1]
    else:
        lo, hi = next((r0, r1) for r0, r1 in zip(rows, rows[1:]) if math.log(r1[0]) >= log_c)
    slope = (math.log(hi[1]) - math.log(lo[1])) / (math.log(hi[0]) - math.log(lo[0]))
    n_opt = math.exp(math.log(lo[1]) + slope * (log_c - math.log(lo[0])))
    return n_opt, flops / (6.0 * n_opt)


def rule_of_thumb_optimal(flops: float) -> tuple[float, float]:
    """(N, D) with D = 20·N and C = 6·N·D, so N = sqrt(C / 120) [Hoffmann, ~20 tokens per parameter]."""
    n = math.sqrt(flops / (6.0 * TOKENS_PER_PARAM))
    return n, TOKENS_PER_PARAM * n


SHAPE_TOLERANCE = 0.01  # `shape_for_params` lands within 1% of the count asked for


def shape_for_params(
    target: float, arch: str = "llama", vocab_size: int | None = None, block_size: int | None = None
) -> ModelConfig:
    """A model shape with `target` parameters (embeddings included) to within SHAPE_TOLERANCE.

    Rule: d_model a multiple of 64 between 64·n_layer and 128·n_layer (GPT-2 small has 64, LLaMA 7B and
    13B have 128; Kaplan et al. 2020 sec. 3.1 find loss nearly flat for d_model/n_layer between ~20 and
    ~200), head size 64 up to d_model 1024 and 128 above, a 32000 (llama) or 50257 (gpt2) vocabulary
    unless given. The MLP width, which the count is linear in, is then solved for the target and rounded
    (to a multiple of 64 where that stays within the tolerance, else of 8), within half to twice the
    architecture's default. Among the shapes that land within the tolerance, the one whose MLP width is
    nearest the default wins, then the widest (aspect nearest 128); if none lands, the closest count.
    """
    vocab = vocab_size or (32000 if arch == "llama" else 50257)
    block = block_size or (4096 if arch == "llama" else 1024)
    build = ModelConfig.gpt2_style if arch == "gpt2" else ModelConfig.llama_style
    best: tuple[tuple[float, float, float], ModelConfig] | None = None
    for n_layer in range(1, 257):
        smallest = math.inf
        for d_model in range(128 * n_layer, 64 * n_layer - 1, -64):
            head = 64 if d_model <= 1024 else 128
            if d_model % head:
                continue
            fields = dict(
                vocab_size=vocab,
                block_size=block,
                n_layer=n_layer,
                d_model=d_model,
                n_head=d_model // head,
                name=f"~{si(target)}",
            )
            default = build(**fields)
            width = default.ffn_hidden
            assert width is not None  # ModelConfig fills in the architecture's default
            slim = build(**fields, ffn_hidden=max(1, width // 2))
            smallest = min(smallest, slim.num_params())
            per_unit = build(**fields, ffn_hidden=width + 1).num_params() - default.num_params()
            exact = width + (target - default.num_params()) / per_unit
            if not width / 2 <= exact <= 2 * width:
                continue
            for step in (64, 8, 1):
                config = build(**fields, ffn_hidden=max(step, round(exact / step) * step))
                if abs(config.num_params() / target - 1) <= SHAPE_TOLERANCE:
                    break
            error = abs(math.log(config.num_params() / target))
            off_default = abs(math.log(config.ffn_hidden / width))  # type: ignore[operator]
            key = (0.0, off_default, -d_model / n_layer) if error <= math.log1p(SHAPE_TOLERANCE) else (1.0, error, 0.0)
            if best is None or key < best[0]:
                best = (key, config)
        if smallest > target:
            break  # deeper shapes are only larger
    if best is None:
        raise ValueError(f"no shape has about {target:.3g} parameters with a {vocab}-token vocabulary")
    return best[1]


# ----------------------------------------------------------------------------------------------------
# Model-state memory: weights, gradients, optimizer states
# ----------------------------------------------------------------------------------------------------


@dataclass
class ModelStates:
    """Bytes per GPU for one strategy; `cpu` is host memory per node when something is offloaded."""

    weights: float
    gradients: float
    optimizer: float
    buffers: float  # gathered/bucketed/cast copies that exist only during a step
    cpu: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.buffers


def largest_module_params(config: ModelConfig) -> int:
    """Parameters of the largest single module (its own tensors, not its children's), the "largest layer"
    DeepSpeed's ZeRO-3 estimator asks for (`stage3.model_to_params`): usually the token embedding, or the
    MLP's input projection."""
    C, F_, V = config.d_model, config.ffn_hidden, config.vocab_size
    kv = config.n_kv_head * config.head_dim  # type: ignore[operator]
    b = 1 if config.bias else 0
    n_fc = 2 if config.mlp == "swiglu" else 1
    candidates = [
        V * C,
        C * (C + 2 * kv) + b * (C + 2 * kv),
        n_fc * F_ * C + b * n_fc * F_,  # type: ignore[operator]
        F_ * C + b * C,  # type: ignore[operator]
    ]
    if config.position == "learned":
        candidates.append(config.block_size * C)
    return max(candidates)


def block_params(config: ModelConfig) -> int:
    """Parameters of one Transformer block (an FSDP unit)."""
    final_norm = config.d_model * (2 if config.norm == "layernorm" and config.bias else 1)
    return (config.num_params(include_embeddings=False) - final_norm) // config.n_layer


def model_states(
    config: ModelConfig,
    strategy: str,
    dp: int,
    precision: str = Dtype.BFLOAT16,
    offload: str | None = None,
    shard: int = 1,
    gpus_per_node: int = 1,
) -> ModelStates:
    """Weights, gradients, AdamW states and step buffers per GPU, as each engine allocates them.

    `dp` is the data-parallel degree (GPUs / (tp·pp)): ZeRO and FSDP shard over it, never over the total
    GPU count. `shard` = tp·pp, the model-parallel split of the parameters (assumed even).

    single / ddp, bf16 autocast: fp32 weights 4 + fp32 gradients 4 + AdamW m and v 8 = 16 B/param, plus
      2 B/param of bf16 weight casts autocast keeps for the backward; DDP adds its gradient buckets
      (4 B/param, `gradient_as_bucket_view=False`, PyTorch's default).
    zero1 (DeepSpeed, bf16): bf16 weights 2 and bf16 gradients 2 replicated; fp32 master 4, fp32 gradient
      partition 4 and AdamW 8 sharded: 4 + 16/dp.
    zero2: 2 + 18/dp, DeepSpeed's own count [DeepSpeed] (bf16 gradients are reduced into partitions too).
    zero3: 18/dp plus the largest layer gathered (4 B/param of it) [DeepSpeed].
    fsdp (FSDP2 full sharding): fp32 weights, gradients and AdamW all sharded, 16/dp [FSDP2], plus the
      all-gathered bf16 units: the root (embeddings, head) and two blocks (current + prefetched), and one
      block's fp32 gradient before its reduce-scatter.
    fp32 precision drops the 16-bit copies (zero: 4 + 4 + 8 bytes, partitioned per stage).
    Offload 'optimizer' moves fp32 master, gradients and AdamW to CPU; 'params' (zero3/fsdp) moves the
    parameters too, leaving the gathered layers on the GPU.
    """
    N = config.num_params() / shard
    mixed = precision != Dtype.FLOAT32
    # bytes per weight of 16- and 8-bit casts: float8 keeps bf16 and fp8 casts of the weights
    cast = {Dtype.BFLOAT16: 2.0, FLOAT8: 3.0, Dtype.FLOAT32: 0.0}[precision]
    largest = largest_module_params(config) / shard
    if strategy in (Strategy.SINGLE, Strategy.DDP):
        buckets = 4.0 * N if strategy == Strategy.DDP else 0.0
        return ModelStates(4.0 * N, 4.0 * N, 8.0 * N, cast * matmul_params(config) / shard + buckets)
    if strategy == Strategy.FSDP:
        unit = 2.0 if mixed else 4.0
        gathered = unit * (config.num_params() - config.n_layer * block_params(config) + 2 * block_params(config))
        buffers = (gathered + 4.0 * block_params(config)) / shard
        if offload == "params":  # CPUOffloadPolicy: sharded params, grads and optimizer live on the host
            return ModelStates(0.0, 0.0, 0.0, buffers, cpu=16.0 * N / dp * gpus_per_node)
        return ModelStates(4.0 * N / dp, 4.0 * N / dp, 8.0 * N / dp, buffers)
    stage = Strategy(strategy).zero_stage if strategy in tuple(Strategy) else 0
    if not stage:
        raise ValueError(f"unknown strategy {strategy!r}")
    if not mixed:  # fp32 ZeRO: no 16-bit copies, no separate master weights [ZeRO sec. 5 with K = 8]
        w, g = (4.0 * N / dp if stage == 3 else 4.0 * N), (4.0 * N / dp if stage >= 2 else 4.0 * N)
        if offload:
            return ModelStates(
                w if offload != "params" else 0.0,
                g,
                0.0,
                4.0 * largest if stage == 3 else 0.0,
                cpu=8.0 * N / dp * gpus_per_node,
            )
        return ModelStates(w, g, 8.0 * N / dp, 4.0 * largest if stage == 3 else 0.0)
    if stage == 3:
        if offload == "params":
            return ModelStates(0.0, 0.0, 0.0, 4.0 * largest, cpu=18.0 * N / dp * gpus_per_node)
        if offload == "optimizer":
            return ModelStates(2.0 * N / dp, 0.0, 0.0, 4.0 * largest, cpu=16.0 * N / dp * gpus_per_node)
        return ModelStates(6.0 * N / dp, 4.0 * N / dp, 8.0 * N / dp, 4.0 * largest)
    if offload == "optimizer":  # DeepSpeed: only the 16-bit weights stay on the GPU
        return ModelStates(2.0 * N, 0.0, 0.0, 0.0, cpu=16.0 * N / dp * gpus_per_node)
    if stage == 1:
        return ModelStates(2.0 * N + 4.0 * N / dp, 2.0 * N + 4.0 * N / dp, 8.0 * N / dp, 0.0)
    return ModelStates(2.0 * N + 4.0 * N / dp, 6.0 * N / dp, 8.0 * N / dp, 0.0)


def zero_paper_bytes(n_params: float, strategy: str, dp: int) -> float:
    """Model states per GPU in the ZeRO paper's accounting for mixed-precision Adam, 2 + 2 + 12 bytes
    per parameter [ZeRO sec. 5.1, Figure 1]: DDP 16Ψ, stage 1 4Ψ + 12Ψ/Nd, stage 2 2Ψ + 14Ψ/Nd,
    stage 3 (and FSDP full sharding) 16Ψ/Nd."""
    per_param: dict[str, float] = {
        Strategy.SINGLE: 16.0,
        Strategy.DDP: 16.0,
        Strategy.ZERO1: 4.0 + 12.0 / dp,
        Strategy.ZERO2: 2.0 + 14.0 / dp,
        Strategy.ZERO3: 16.0 / dp,
        Strategy.FSDP: 16.0 / dp,
    }
    return per_param[strategy] * n_params


# ----------------------------------------------------------------------------------------------------
# Activation memory [Korthikanti]
# ----------------------------------------------------------------------------------------------------


@dataclass
class LayerActivations:
    """Bytes one layer keeps for its backward, per token, split the way tensor parallelism splits them."""

    replicated: float  # norm inputs, inputs of the first linear of each sub-block, dropout masks
    split: float  # Q, K, V, attention output, MLP hidden activations
    scores: float  # the attention-score matrix terms, per token, already multiplied by s (0 for flash)

    def bytes(self, s: int, b: int, t: int = 1, sequence_parallel: bool = True) -> float:
        per_token = (self.replicated / (t if sequence_parallel else 1)) + (self.split + self.scores) / t
        return s * b * per_token


def residual_bytes(strategy: str, precision: str) -> int:
    """Bytes per element of the residual stream: fp32 under autocast (single and ddp keep fp32 weights,
    so embeddings and residual adds stay fp32) and in fp32 runs; 2 when the engine computes with bf16
    weights (DeepSpeed bf16, FSDP2 with param_dtype=bf16)."""
    if precision == Dtype.FLOAT32 or strategy in (Strategy.SINGLE, Strategy.DDP):
        return 4
    return 2


def norm_bytes(config: ModelConfig, act_bytes: int, residual: int) -> float:
    """Bytes per token one pre-norm keeps, including the following linear's input.

    LayerNorm: its input (residual dtype) and its output (the linear's input, compute dtype).
    RMSNorm as `reference_llm.model.RMSNorm` computes it: the fp32 input copy, the normalised tensor the
    weight multiply keeps for the weight's gradient (residual dtype), and the output.
    """
    h = config.d_model
    if config.norm == "rmsnorm":
        return (4 + residual + act_bytes) * h
    return (residual + act_bytes) * h


def layer_activations(
    config: ModelConfig,
    seq_len: int,
    act_bytes: int = 2,
    flash: bool = True,
    dropout: float | None = None,
    follow_code: bool = True,
    residual_bytes: int | None = None,
) -> LayerActivations:
    """Korthikanti et al.'s per-layer itemisation [Korthikanti sec. 4.1], generalised to GQA and SwiGLU.

    For a GPT-2 block (h, 4h MLP) with dropout and 16-bit activations, `follow_code=False` gives exactly
    sbh(34 + 5as/h): attention 11sbh + 5as²b, MLP 19sbh, two norms 4sbh. The items:
      replicated: both norm inputs and the QKV and MLP-in linears' inputs (4h elements), plus two 1-byte
        dropout masks (h each) when dropout > 0;
      split: Q and K (h + kv), V (kv), the output projection's input (h), the MLP's hidden activations
        (GELU: its input and output, 2F; SwiGLU: gate and up, silu(gate) and the product, 4F);
      scores (only without a fused/flash kernel, which recomputes them in the backward): softmax output
        a·s per token, plus a 1-byte dropout mask and the dropped output when dropout > 0.
    With `follow_code` (the default) the items follow what `reference_llm.model` really keeps, as
    read off autograd's saved tensors (tests/generator/test_estimate_activations.py measures it):
      - the residual stream is in `residual_bytes` (fp32 under autocast, whose weights stay fp32; bf16
        when an engine holds bf16 weights), and norms keep what `norm_bytes` says;
      - fused kernel: with RoPE the rotated Q and K are new tensors beside the fused QKV output (which
        V's view keeps alive); grouped-query K and V are expanded to all heads; the kernel saves its
        output beside the projection's re-laid-out input;
      - manual path: the batched matmuls keep contiguous copies of Q, K and V, and the softmax's output
        (in the compute dtype) is kept for its backward and AV's.
    """
    h, F_, a = config.d_model, config.ffn_hidden, config.n_head
    kv = config.n_kv_head * config.head_dim  # type: ignore[operator]
    p = config.dropout if dropout is None else dropout
    mask = 1.0 if p > 0 else 0.0
    if follow_code:
        r = act_bytes if residual_bytes is None else residual_bytes
        replicated = 2 * norm_bytes(config, act_bytes, r) + mask * 2 * h
    else:
        replicated = act_bytes * 4 * h + mask * 2 * h
    if not follow_code:
        qkv = h + 2 * kv
    elif not flash:
        qkv = 3 * h  # the batched matmuls keep contiguous (or head-expanded) copies of Q, K and V
    elif config.position == "rope":
        # rotated Q and K are new tensors; with K = H, V's view keeps the fused QKV output alive,
        # with GQA the expanded K and V are kept instead
        qkv = (h + 2 * kv) + 2 * h if kv == h else 3 * h
    else:
        # Q, K, V are views of the fused output; GQA adds the expanded K and V
        qkv = h + 2 * kv if kv == h else (h + 2 * kv) + 2 * h
    mlp = 4 * F_ if config.mlp == "swiglu" else 2 * F_  # type: ignore[operator]
    flash_output = h if flash and follow_code else 0
    split = act_bytes * (qkv + h + flash_output + mlp)
    if flash:
        scores = 0.0
    else:
        # the softmax output, which its backward and AV's both keep; reference_llm takes the softmax in
        # the compute dtype (PyTorch accumulates bf16 softmax in fp32 inside the kernel)
        scores = a * seq_len * (act_bytes + mask * (1 + act_bytes))
    return LayerActivations(replicated, split, scores)


def korthikanti_layer_bytes(
    s: int, b: int, h: int, a: int, t: int = 1, sequence_parallel: bool = False, recompute: str = "none"
) -> float:
    """The paper's closed forms for one GPT layer, 16-bit activations, dropout on [Korthikanti Table 2]:
    no parallelism sbh(34 + 5as/h); tensor parallel sbh(10 + 24/t + 5as/(ht)); tensor + sequence
    parallel sbh/t·(34 + 5as/h); selective recompute drops the 5as/h term; full recompute keeps 2sbh
    (divided by t with sequence parallelism). Kept as a reference the generalised form is tested against.
    """
    if recompute == "full":
        return 2 * s * b * h / (t if sequence_parallel else 1)
    score = 0.0 if recompute == "selective" else 5 * a * s / h
    if sequence_parallel:
        return s * b * h / t * (34 + score)
    return s * b * h * (10 + 24 / t + score / t)


def activation_bytes(
    config: ModelConfig,
    seq_len: int,
    micro_batch: int,
    act_bytes: int = 2,
    flash: bool = True,
    tp: int = 1,
    sequence_parallel: bool = True,
    checkpointing: str = "none",
    residual_bytes: int | None = None,
) -> float:
    """Activation bytes per GPU for a training step.

    none / selective: L layers' activations (selective = the same with no score terms) [Korthikanti].
    full: each layer keeps only its input (s·b·h in the residual dtype, /t with sequence parallelism), plus one
      layer's full set while it is recomputed in the backward [Korthikanti sec. 5].
    Pipeline parallelism needs no term: a 1F1B stage holds up to p micro-batches of L/p layers, so the
    first stage holds L layers' worth whatever p is [Korthikanti sec. 4.2.3, Narayanan].
    Plus the final norm, which keeps what a block's norm keeps (`norm_bytes`).
    """
    r = act_bytes if residual_bytes is None else residual_bytes
    layer = layer_activations(config, seq_len, act_bytes, flash, residual_bytes=r)
    final_norm = seq_len * micro_batch * norm_bytes(config, act_bytes, r) / (tp if sequence_parallel else 1)
    if checkpointing == "selective":
        layer = LayerActivations(layer.replicated, layer.split, 0.0)
    one_layer = layer.bytes(seq_len, micro_batch, tp, sequence_parallel)
    if checkpointing == "full":
        inputs = seq_len * micro_batch * config.d_model * r / (tp if sequence_parallel else 1)
        return config.n_layer * inputs + one_layer + final_norm
    return config.n_layer * one_layer + final_norm


def logits_bytes(config: ModelConfig, seq_len: int, micro_batch: int, act_bytes: int = 2, tp: int = 1) -> float:
    """The output layer's peak, reached early in the backward: the logits (act_bytes, still held by the
    caller), the fp32 log-softmax the cross-entropy keeps, the fp32 gradients of the log-probabilities
    and of the logits, and that gradient cast back to 16 bits when the logits are 16-bit:
    s·b·V·(a + 12 + (a if a < 4)), V split by t with a vocabulary-parallel head.
    `reference_llm.model.Transformer.forward` computes the loss in fp32."""
    per_element = act_bytes + 12 + (act_bytes if act_bytes < 4 else 0)
    return seq_len * micro_batch * config.vocab_size * per_element / tp


def kv_cache_bytes(config: ModelConfig, batch: int, seq_len: int, bytes_per: int = 2, tp: int = 1) -> float:
    """Inference KV cache: keys and values for every layer, 2·L·b·s·(K·D)·bytes (K key/value heads of
    size D, so GQA shrinks it by H/K) [Ainslie et al. 2023, sec. 2]; split across t with TP."""
    kv = config.n_kv_head * config.head_dim  # type: ignore[operator]
    return 2.0 * config.n_layer * batch * seq_len * kv * bytes_per / tp
