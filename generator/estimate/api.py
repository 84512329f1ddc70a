"""The estimator's public seam: `estimate_run`, `choose_parallelism`, `build_model`, `Estimate`.

Given a model shape, a token count and hardware, say what a training run costs (FLOPs, GPU-hours, wall
time, dollars) and whether it fits (memory per GPU, broken down), with every assumption spelled out.
The arithmetic lives in `formulas`; this module validates inputs, picks defaults and assembles results.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from generator.errors import EstimateError
from generator.estimate import formulas
from generator.estimate.formulas import GIB, STRATEGIES
from generator.estimate.hardware import KNOWN_GPUS, PRICES_AS_OF, Hardware
from reference_llm.errors import ConfigError
from reference_llm.model.config import PRESETS, ModelConfig

PRECISIONS = ("bf16", "fp32", "fp8")
OFFLOADS = ("optimizer", "params")
ATTENTION = ("auto", "flash", "manual")
GPU_RESERVED_GIB = 1.0  # CUDA context, cuBLAS/NCCL workspaces: never available to tensors
CPU_USABLE_FRACTION = 0.75  # leave the OS and other programs a quarter of RAM
MAX_AUTO_MICRO_BATCH = 32
# The order `auto` tries strategies in: cheapest communication first. Stage-3 sharding is FSDP2 (no
# extra dependency, PyTorch's maintained path); zero3 remains available by name.
AUTO_ORDER = ("ddp", "zero1", "zero2", "fsdp")


@dataclass
class Estimate:
    """One training run's cost and memory. `to_dict()` is the JSON form (`llmgen estimate --json`)."""

    model: str
    params: int
    params_non_embedding: int
    tokens: float
    seq_len: int
    flops: float  # 6·N·D, the convention published totals use
    flops_attention: float
    flops_total: float  # what the time estimate divides by
    hardware: str
    n_gpus: int
    strategy: str
    strategy_reason: str
    tp: int
    pp: int
    dp: int
    micro_batch: int
    grad_accum: int
    precision: str
    activation_checkpointing: str
    offload: str | None
    peak_tflops: float
    mfu: float
    price_per_gpu_hour: float
    gpu_hours: float
    wall_hours: float
    cost_usd: float
    memory_breakdown_gib: dict[str, float]
    memory_per_gpu_gib: float
    memory_usable_gib: float
    fits: bool
    model_states_paper_gib: float
    cpu_offload_gib_per_node: float
    inference_gib: dict[str, float]
    assumptions: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "params": self.params, "params_non_embedding": self.params_non_embedding,
            "tokens": self.tokens, "seq_len": self.seq_len, "flops": self.flops,
            "flops_attention": self.flops_attention, "flops_total": self.flops_total,
            "hardware": self.hardware, "n_gpus": self.n_gpus, "parallelism": self.strategy,
            "parallelism_reason": self.strategy_reason, "tp": self.tp, "pp": self.pp, "dp": self.dp,
            "micro_batch": self.micro_batch, "grad_accum": self.grad_accum, "precision": self.precision,
            "activation_checkpointing": self.activation_checkpointing, "offload": self.offload,
            "peak_tflops": self.peak_tflops, "mfu": self.mfu, "price_per_gpu_hour": self.price_per_gpu_hour,
            "gpu_hours": self.gpu_hours, "wall_hours": self.wall_hours, "cost_usd": self.cost_usd,
            "memory_per_gpu_gib": self.memory_per_gpu_gib, "memory_breakdown_gib": dict(self.memory_breakdown_gib),
            "memory_usable_gib": self.memory_usable_gib, "fits": self.fits,
            "model_states_zero_paper_gib": self.model_states_paper_gib,
            "cpu_offload_gib_per_node": self.cpu_offload_gib_per_node, "inference_gib": dict(self.inference_gib),
            "assumptions": list(self.assumptions), "suggestions": list(self.suggestions),
        }


@dataclass(frozen=True)
class _Plan:
    """Everything that decides memory per GPU; `_memory` is a pure function of it."""

    model: ModelConfig
    hardware: Hardware
    strategy: str
    seq_len: int
    micro_batch: int
    precision: str
    checkpointing: str
    tp: int
    pp: int
    offload: str | None
    flash: bool
    sequence_parallel: bool

    @property
    def dp(self) -> int:
        return self.hardware.n_gpus // (self.tp * self.pp)

    def but(self, **changes: Any) -> _Plan:
        return _Plan(**{**self.__dict__, **changes})


def _memory(plan: _Plan) -> tuple[dict[str, float], float, float]:
    """(breakdown in bytes per GPU, host bytes per node for offload, ZeRO-paper model states)."""
    act_bytes = formulas.ACT_BYTES[plan.precision]
    states = formulas.model_states(plan.model, plan.strategy, plan.dp, plan.precision, plan.offload,
                                   shard=plan.tp * plan.pp, gpus_per_node=plan.hardware.gpus_per_node)
    activations = formulas.activation_bytes(plan.model, plan.seq_len, plan.micro_batch, act_bytes, plan.flash,
                                            plan.tp, plan.sequence_parallel, plan.checkpointing,
                                            formulas.residual_bytes(plan.strategy, plan.precision))
    logits = formulas.logits_bytes(plan.model, plan.seq_len, plan.micro_batch, act_bytes, plan.tp)
    breakdown = {"weights": states.weights, "gradients": states.gradients, "optimizer": states.optimizer,
                 "activations": activations, "logits": logits, "buffers": states.buffers}
    paper = formulas.zero_paper_bytes(plan.model.num_params() / (plan.tp * plan.pp), plan.strategy, plan.dp)
    return breakdown, states.cpu, paper


def _usable_gib(hardware: Hardware) -> float:
    if hardware.is_cpu:
        return hardware.gpu.memory_gib * CPU_USABLE_FRACTION
    return hardware.gpu.memory_gib - GPU_RESERVED_GIB


def _total_gib(plan: _Plan) -> float:
    return sum(_memory(plan)[0].values()) / GIB


def _fits(plan: _Plan) -> bool:
    return _total_gib(plan) <= _usable_gib(plan.hardware)


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------


def build_model(preset: str | None = None, params: float | None = None, arch: str | None = None,
                layers: int | None = None, d_model: int | None = None, heads: int | None = None,
                kv_heads: int | None = None, ffn: int | None = None, vocab: int | None = None,
                seq_len: int | None = None, tied: bool | None = None) -> ModelConfig:
    """A ModelConfig from `--model PRESET`, `--params 7B` (aspect-ratio rule) or an exact shape; the shape
    flags override the preset's fields. Errors name the flag."""
    if preset is not None and params is not None:
        raise EstimateError("give --model or --params, not both")
    for flag, value in (("--layers", layers), ("--d-model", d_model), ("--heads", heads),
                        ("--kv-heads", kv_heads), ("--ffn", ffn), ("--vocab", vocab), ("--seq-len", seq_len)):
        if value is not None and value <= 0:
            raise EstimateError(f"{flag} must be a positive integer, got {value}")
    if arch is not None and arch not in ("gpt2", "llama"):
        raise EstimateError(f"--arch must be gpt2 or llama, got {arch!r}")
    if preset is not None and preset not in PRESETS:
        close = difflib.get_close_matches(preset, list(PRESETS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise EstimateError(f"--model: unknown preset {preset!r}{hint}; known: {', '.join(PRESETS)}")
    if params is not None:
        if params <= 0:
            raise EstimateError(f"--params must be positive, got {params}")
        base = formulas.shape_for_params(params, arch or "llama", vocab, seq_len)
    elif preset is not None:
        base = ModelConfig.preset(preset)
    else:
        base = ModelConfig.preset("demo")
    fields = base.to_dict()
    if arch is not None and arch != base.arch:  # switch the family, keep the preset's sizes
        fields.update({k: v for k, v in ModelConfig.for_arch(arch).to_dict().items()
                       if k in ("norm", "position", "mlp", "bias", "tie_embeddings")})
    overrides = {"n_layer": layers, "d_model": d_model, "n_head": heads, "n_kv_head": kv_heads,
                 "ffn_hidden": ffn, "vocab_size": vocab, "block_size": seq_len, "tie_embeddings": tied}
    changed = {k: v for k, v in overrides.items() if v is not None}
    fields.update(changed)
    if ("d_model" in changed or "n_head" in changed) and "n_kv_head" not in changed:
        fields["n_kv_head"] = min(fields["n_kv_head"], fields["n_head"])
        if fields["n_head"] % fields["n_kv_head"]:
            fields["n_kv_head"] = fields["n_head"]
    if "d_model" in changed and "ffn_hidden" not in changed:
        fields["ffn_hidden"] = None  # re-derive the architecture's default width
    if fields["d_model"] % fields["n_head"]:
        raise EstimateError(f"--heads {fields['n_head']} must divide --d-model {fields['d_model']}")
    if fields["n_head"] % fields["n_kv_head"]:
        raise EstimateError(f"--kv-heads {fields['n_kv_head']} must divide --heads {fields['n_head']}")
    if changed:
        fields["name"] = f"{base.name}*" if preset or params else "custom"
    try:
        return ModelConfig.from_dict(fields)
    except ConfigError as err:
        raise EstimateError(f"model shape: {err}") from None


def _validate(model: ModelConfig, hardware: Hardware, parallelism: str, tp: int, pp: int, precision: str,
              offload: str | None, checkpointing: str, micro_batch: int | None, grad_accum: int,
              seq_len: int, attention: str) -> None:
    if parallelism not in ("auto", *STRATEGIES):
        raise EstimateError(f"--parallelism must be one of auto, {', '.join(STRATEGIES)}; got {parallelism!r}")
    if precision not in PRECISIONS:
        raise EstimateError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if checkpointing not in formulas.CHECKPOINTING:
        raise EstimateError(f"--activation-checkpointing must be one of {', '.join(formulas.CHECKPOINTING)}; "
                            f"got {checkpointing!r}")
    if attention not in ATTENTION:
        raise EstimateError(f"attention must be one of {', '.join(ATTENTION)}; got {attention!r}")
    for flag, value in (("--tp", tp), ("--pp", pp), ("--grad-accum", grad_accum), ("--seq-len", seq_len)):
        if value <= 0:
            raise EstimateError(f"{flag} must be a positive integer, got {value}")
    if micro_batch is not None and micro_batch <= 0:
        raise EstimateError(f"--micro-batch must be a positive integer, got {micro_batch}")
    if seq_len > model.block_size:
        raise EstimateError(f"--seq-len {seq_len} exceeds the model's context of {model.block_size} tokens")
    if tp > hardware.gpus_per_node:
        raise EstimateError(f"--tp {tp} is larger than the {hardware.gpus_per_node} GPU(s) per node of "
                            f"{hardware}; tensor parallelism stays inside a node")
    if hardware.gpus_per_node % tp:
        raise EstimateError(f"--tp {tp} must divide the {hardware.gpus_per_node} GPUs per node of {hardware}")
    if pp > model.n_layer:
        raise EstimateError(f"--pp {pp} is more pipeline stages than the model's {model.n_layer} layers")
    if hardware.n_gpus % (tp * pp):
        raise EstimateError(f"--tp {tp} x --pp {pp} must divide the {hardware.n_gpus} GPUs of {hardware}")
    if model.n_head % tp:
        raise EstimateError(f"--tp {tp} must divide the model's {model.n_head} attention heads")
    if offload is not None:
        if offload not in OFFLOADS:
            raise EstimateError(f"--offload must be optimizer or params; got {offload!r}")
        if parallelism in ("single", "ddp"):
            raise EstimateError(f"--offload needs --parallelism zero1, zero2, zero3 or fsdp, not {parallelism}")
        if offload == "params" and parallelism in ("zero1", "zero2"):
            raise EstimateError("--offload params needs --parallelism zero3 or fsdp")
        if offload == "optimizer" and parallelism == "fsdp":
            raise EstimateError("--offload optimizer: FSDP offloads parameters and optimizer together; "
                                "use --offload params (or --parallelism zero1/zero2/zero3)")
    if hardware.is_cpu:
        if parallelism not in ("auto", "single"):
            raise EstimateError(f"--parallelism {parallelism} needs GPUs; on cpu the estimator models one "
                                "process (single)")
        if precision == "fp8" or tp > 1 or pp > 1 or offload:
            raise EstimateError("--hardware cpu supports bf16 or fp32 on one process, without --tp, --pp, "
                                "--offload")
    elif parallelism == "single" and hardware.n_gpus > 1:
        raise EstimateError(f"--parallelism single uses one device, but --hardware {hardware} has "
                            f"{hardware.n_gpus}; use ddp, zero1-3, fsdp or auto")
    if precision == "fp8" and hardware.gpu.fp8_tflops is None:
        fp8 = [name for name, gpu in KNOWN_GPUS.items() if gpu.fp8_tflops]
        raise EstimateError(f"--precision fp8: {hardware.gpu.name} has no fp8 tensor cores; "
                            f"fp8 GPUs: {', '.join(fp8)}")


def _flash(hardware: Hardware, precision: str, seq_len: int, attention: str) -> bool:
    """Whether the attention kernel keeps no score matrix. `auto` mirrors `Attention._use_sdpa` in
    reference_llm.model: SDPA (fused) everywhere except CPU bf16 with short contexts (manual)."""
    if attention != "auto":
        return attention == "flash"
    return not (hardware.is_cpu and precision != "fp32" and seq_len <= 512)


# ----------------------------------------------------------------------------------------------------
# Parallelism choice and suggestions
# ----------------------------------------------------------------------------------------------------


def choose_parallelism(model: ModelConfig, hardware: Hardware, micro_batch: int = 1, seq_len: int | None = None,
                       precision: str = "bf16", activation_checkpointing: str = "none", tp: int = 1, pp: int = 1,
                       offload: str | None = None, sequence_parallel: bool = True,
                       attention: str = "auto") -> tuple[str, str]:
    """What `auto` means: (strategy, one-sentence reason).

    One device (or the CPU): single. Otherwise ddp when model states and activations fit replicated,
    else the lowest ZeRO stage that fits (zero1, zero2), else FSDP full sharding.
    """
    seq = seq_len or model.block_size
    if hardware.is_cpu or hardware.n_gpus == 1:
        what = "the CPU" if hardware.is_cpu else f"one {hardware.gpu.name}"
        return "single", f"{what} is one device, so no data parallelism is needed"
    base = _Plan(model, hardware, "ddp", seq, micro_batch, precision, activation_checkpointing, tp, pp, offload,
                 _flash(hardware, precision, seq, attention), sequence_parallel)
    usable = _usable_gib(hardware)
    previous: tuple[str, float] | None = None
    for strategy in AUTO_ORDER:
        if offload and strategy == "ddp" or offload == "params" and strategy in ("zero1", "zero2") \
                or offload == "optimizer" and strategy == "fsdp":
            continue
        need = _total_gib(base.but(strategy=strategy))
        if need <= usable:
            if previous is None:
                return strategy, (f"model states and activations ({need:.1f} GiB per GPU) fit replicated in the "
                                  f"{usable:.0f} GiB usable on each {hardware.gpu.name}")
            return strategy, (f"{previous[0]} would need {previous[1]:.1f} GiB per GPU, more than the {usable:.0f} "
                              f"GiB usable; {strategy} is the least sharding that fits ({need:.1f} GiB)")
        previous = (strategy, need)
    assert previous is not None
    return "fsdp", (f"even full sharding needs {previous[1]:.1f} GiB per GPU, more than the {usable:.0f} GiB "
                    "usable; see the suggestions")


def _suggestions(plan: _Plan, grad_accum: int) -> list[str]:
    """Single changes that make a plan that does not fit, fit; least disruptive first."""
    tips: list[str] = []
    usable = _usable_gib(plan.hardware)

    def add(change: _Plan, text: str) -> None:
        need = _total_gib(change)
        if need <= usable:
            tips.append(f"{text} ({need:.1f} GiB per GPU)")

    if not plan.hardware.is_cpu and plan.hardware.n_gpus > 1:
        order = ("ddp", "zero1", "zero2", "zero3", "fsdp")
        for strategy in order[order.index(plan.strategy) + 1 if plan.strategy in order else 0:]:
            if plan.offload == "params" and strategy not in ("zero3", "fsdp") or plan.offload == "optimizer" \
                    and strategy == "fsdp":
                continue
            before = len(tips)
            add(plan.but(strategy=strategy), f"--parallelism {strategy}")
            if len(tips) > before:
                break
    if plan.checkpointing == "none":
        add(plan.but(checkpointing="selective"), "--activation-checkpointing selective")
    mb = plan.micro_batch // 2
    while mb >= 1:
        before = len(tips)
        add(plan.but(micro_batch=mb), f"--micro-batch {mb} --grad-accum {grad_accum * plan.micro_batch // mb}")
        if len(tips) > before:
            break
        mb //= 2
    if plan.checkpointing != "full":
        add(plan.but(checkpointing="full"), "--activation-checkpointing full")
    tp = plan.tp * 2
    while tp <= plan.hardware.gpus_per_node and not plan.hardware.is_cpu:
        if plan.hardware.gpus_per_node % tp == 0 and plan.model.n_head % tp == 0:
            before = len(tips)
            add(plan.but(tp=tp), f"--tp {tp}")
            if len(tips) > before:
                break
        tp *= 2
    if plan.strategy in ("zero1", "zero2", "zero3") and not plan.offload:
        add(plan.but(offload="optimizer"), "--offload optimizer")
    if not plan.hardware.is_cpu:
        sharded = plan.strategy if plan.strategy in ("zero3", "fsdp") else "fsdp"
        per_node = plan.hardware.gpus_per_node
        for nodes in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
            if nodes <= plan.hardware.nodes:
                continue
            more = Hardware(nodes, per_node, plan.hardware.gpu)
            grown = plan.but(hardware=more, strategy=sharded)
            if _fits(grown):
                change = f"--hardware {more}" + (f" --parallelism {sharded}" if sharded != plan.strategy else "")
                add(grown, change)
                break
    if not tips:
        smallest = plan.but(strategy="fsdp" if plan.hardware.n_gpus > 1 else plan.strategy,
                            checkpointing="full", micro_batch=1)
        tips.append(f"no single change fits; even fsdp (when several GPUs) with full checkpointing and micro-batch 1 "
                    f"needs {_total_gib(smallest):.1f} GiB per GPU: use a bigger GPU or more of them")
    return tips


# ----------------------------------------------------------------------------------------------------
# The estimate
# ----------------------------------------------------------------------------------------------------


def estimate_run(model: ModelConfig, tokens: float | str, hardware: Hardware, parallelism: str = "auto",
                 micro_batch: int | None = None, seq_len: int | None = None, grad_accum: int = 1, tp: int = 1,
                 pp: int = 1, offload: str | None = None, activation_checkpointing: str = "none",
                 precision: str = "bf16", mfu: float | None = None, price: float | None = None,
                 sequence_parallel: bool = True, attention: str = "auto") -> Estimate:
    """Cost and memory of training `model` on `tokens` tokens (a number, or "chinchilla" for 20 per
    parameter) on `hardware`. `parallelism="auto"` calls `choose_parallelism`; `micro_batch=None` picks the
    largest power of two up to 32 that fits (1 if none does)."""
    seq = model.block_size if seq_len is None else seq_len
    _validate(model, hardware, parallelism, tp, pp, precision, offload, activation_checkpointing, micro_batch,
              grad_accum, seq, attention)
    if mfu is not None and not 0 < mfu <= 1:
        raise EstimateError(f"--mfu must be in (0, 1], got {mfu}")
    if price is not None and price < 0:
        raise EstimateError(f"--price must be zero or positive, got {price}")
    n_params = model.num_params()
    notes: list[str] = []
    if tokens == "chinchilla":
        tokens = formulas.TOKENS_PER_PARAM * n_params
        notes.append("tokens: 20 per parameter (Hoffmann et al. 2022)")
    if isinstance(tokens, str) or tokens <= 0:
        raise EstimateError(f"--tokens must be positive or 'chinchilla', got {tokens!r}")

    flash = _flash(hardware, precision, seq, attention)
    if parallelism == "auto":
        strategy, reason = choose_parallelism(model, hardware, micro_batch or 1, seq, precision,
                                              activation_checkpointing, tp, pp, offload, sequence_parallel,
                                              attention)
    else:
        strategy, reason = parallelism, "chosen with --parallelism"
    plan = _Plan(model, hardware, strategy, seq, micro_batch or 1, precision, activation_checkpointing, tp, pp,
                 offload, flash, sequence_parallel)
    if micro_batch is None:
        mb = MAX_AUTO_MICRO_BATCH
        while mb > 1 and not _fits(plan.but(micro_batch=mb)):
            mb //= 2
        plan = plan.but(micro_batch=mb)
        notes.append(f"micro-batch {mb}: the largest power of two up to {MAX_AUTO_MICRO_BATCH} that fits")

    # Time and cost
    dense, attention_flops = formulas.training_flops(model, tokens, seq)
    peak = hardware.gpu.peak_tflops(precision)
    assert peak is not None  # fp8 without fp8 cores was refused in _validate
    recompute = formulas.recompute_flops_factor(model, seq, activation_checkpointing)
    base_mfu = hardware.gpu.mfu
    if mfu is None:
        mfu, mfu_notes = formulas.default_mfu(base_mfu, precision, recompute, pp, grad_accum, offload)
        notes.append("MFU (default) " + "; ".join(mfu_notes) + f" -> {mfu:.3f}")
    else:
        notes.append(f"MFU {mfu:.3f} (given with --mfu)")
    gpu_hours = formulas.gpu_seconds(dense + attention_flops, peak, mfu) / 3600.0
    rate = hardware.gpu.price_per_hour if price is None else price
    if hardware.is_cpu:
        notes.append(f"cpu: {hardware.gpu.note}; your own machine, so no price unless --price")
    else:
        notes.append(f"{hardware.gpu.name}: {peak:g} TFLOP/s dense {precision} peak"
                     + (f" ({hardware.gpu.note})" if hardware.gpu.note else "") + ", "
                     + (f"${rate:.2f}/GPU-hour (given)" if price is not None
                        else f"${rate:.2f}/GPU-hour (typical on-demand, {PRICES_AS_OF}; override with --price)"))
    notes.append("time = (6·N·D + attention FLOPs) / (GPUs x peak x MFU); N excludes the embedding lookup")

    # Memory
    breakdown, cpu_bytes, paper = _memory(plan)
    breakdown_gib = {k: v / GIB for k, v in breakdown.items()}
    total_gib = sum(breakdown_gib.values())
    usable = _usable_gib(hardware)
    fits = total_gib <= usable
    act_bytes = formulas.ACT_BYTES[precision]
    notes.append(f"activations: Korthikanti et al. 2022, {act_bytes}-byte elements, "
                 + ("fused attention (no score matrix)" if flash else "manual attention (score matrix kept)")
                 + (f", sequence parallel over tp={tp}" if tp > 1 and sequence_parallel else "")
                 + (f", checkpointing {activation_checkpointing}" if activation_checkpointing != "none" else ""))
    notes.append("memory usable: " + (f"{CPU_USABLE_FRACTION:.0%} of {hardware.gpu.memory_gib:.0f} GiB RAM"
                                      if hardware.is_cpu else
                                      f"{hardware.gpu.memory_gib:g} GiB less {GPU_RESERVED_GIB:g} GiB for the CUDA "
                                      "context and library workspaces"))
    if strategy in ("zero1", "zero2", "zero3"):
        notes.append("model states follow DeepSpeed's own accounting (fp32 gradient partitions included); "
                     "the ZeRO paper's 2+2+12 bytes/param figure is shown beside it")
    kv = formulas.kv_cache_bytes(model, plan.micro_batch, seq, 2, tp)
    inference = {"weights_bf16": 2.0 * n_params / (tp * pp) / GIB, "kv_cache": kv / GIB,
                 "total": (2.0 * n_params / (tp * pp) + kv) / GIB}
    return Estimate(
        model=model.name, params=n_params, params_non_embedding=model.num_params(include_embeddings=False),
        tokens=float(tokens), seq_len=seq, flops=dense, flops_attention=attention_flops,
        flops_total=dense + attention_flops, hardware=str(hardware), n_gpus=hardware.n_gpus, strategy=strategy,
        strategy_reason=reason, tp=tp, pp=pp, dp=plan.dp, micro_batch=plan.micro_batch, grad_accum=grad_accum,
        precision=precision, activation_checkpointing=activation_checkpointing, offload=offload, peak_tflops=peak,
        mfu=mfu, price_per_gpu_hour=rate, gpu_hours=gpu_hours, wall_hours=gpu_hours / hardware.n_gpus,
        cost_usd=gpu_hours * rate, memory_breakdown_gib=breakdown_gib, memory_per_gpu_gib=total_gib,
        memory_usable_gib=usable, fits=fits, model_states_paper_gib=paper / GIB,
        cpu_offload_gib_per_node=cpu_bytes / GIB, inference_gib=inference, assumptions=notes,
        suggestions=[] if fits else _suggestions(plan, grad_accum))
