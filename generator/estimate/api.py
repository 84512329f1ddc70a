"""The estimator's public seam: `RunSpec`, `estimate_run`, `choose_parallelism`, `build_model`, `Estimate`.

Given a model shape, a token count and hardware (a `RunSpec`), say what a training run costs (FLOPs,
GPU-hours, wall time, dollars) and whether it fits (memory per GPU, broken down), with every assumption
spelled out. The arithmetic lives in `formulas`; this module validates inputs, picks defaults and
assembles results.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from generator.errors import EstimateError
from generator.estimate import formulas
from generator.estimate.formulas import GIB
from generator.estimate.hardware import KNOWN_GPUS, PRICES_AS_OF, Hardware
from generator.estimate.mfu import default_mfu
from generator.estimate.precision import FLOAT8, PRECISIONS
from generator.units import duration
from reference_llm.config import Dtype, Offload, Strategy, check_parallel_layout
from reference_llm.errors import ConfigError
from reference_llm.model.config import PRESETS, ModelConfig

# Names are plain strings here and in every result (Strategy members are str, but YAML cannot write them).
AUTO = "auto"  # parallelism: let `choose_parallelism` pick the strategy
PARALLELISMS: tuple[str, ...] = (AUTO, *(s.value for s in Strategy))
# What can be offloaded (the estimator says None for no offload).
OFFLOADS: tuple[str, ...] = tuple(o.value for o in Offload if o != Offload.NONE)
ATTENTION = ("auto", "flash", "manual")
ARCHS = ("gpt2", "llama")  # the ModelConfig families `--arch` switches between
GPU_RESERVED_GIB = 1.0  # CUDA context, cuBLAS/NCCL workspaces: never available to tensors
CPU_USABLE_FRACTION = 0.75  # leave the OS and other programs a quarter of RAM
MAX_AUTO_MICRO_BATCH = 32
# The order `auto` tries strategies in: cheapest communication first. Stage-3 sharding is FSDP2 (no
# extra dependency, PyTorch's maintained path); zero3 remains available by name.
AUTO_ORDER = (Strategy.DDP, Strategy.ZERO1, Strategy.ZERO2, Strategy.FSDP)
# Strategies that shard parameters, so that they can offload them.
_SHARDS_PARAMS = (Strategy.ZERO3, Strategy.FSDP)
# A run longer than this gets a suggestion of the hardware that would finish it in about this time.
LONG_RUN_HOURS = 30 * 24.0


@dataclass
class Estimate:
    """One training run's cost and memory. `to_dict()` is the JSON form (`llmgen estimate --json`)."""

    model: str
    params: int  # every parameter of the shape
    params_non_embedding: int
    flops_params: float  # N in 6·N·D: the matmul weights (blocks and output head), or what --params gave
    flops_params_source: str  # which of the two, in words
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
    suggestions: list[str] = field(default_factory=list)  # single changes that make it fit
    faster: str | None = None  # for a run longer than LONG_RUN_HOURS: the hardware that finishes it sooner

    @property
    def step_bytes(self) -> float:
        """What one training step allocates on top of the model state: activations, logits and the step's
        buffers, in bytes; the figure a measured step peak is compared with."""
        gib = self.memory_breakdown_gib
        return (gib["activations"] + gib["logits"] + gib["buffers"]) * 2**30

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "params": self.params,
            "params_non_embedding": self.params_non_embedding,
            "flops_params": self.flops_params,
            "flops_params_source": self.flops_params_source,
            "tokens": self.tokens,
            "seq_len": self.seq_len,
            "flops": self.flops,
            "flops_attention": self.flops_attention,
            "flops_total": self.flops_total,
            "hardware": self.hardware,
            "n_gpus": self.n_gpus,
            "parallelism": self.strategy,
            "parallelism_reason": self.strategy_reason,
            "tp": self.tp,
            "pp": self.pp,
            "dp": self.dp,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "precision": self.precision,
            "activation_checkpointing": self.activation_checkpointing,
            "offload": self.offload,
            "peak_tflops": self.peak_tflops,
            "mfu": self.mfu,
            "price_per_gpu_hour": self.price_per_gpu_hour,
            "gpu_hours": self.gpu_hours,
            "wall_hours": self.wall_hours,
            "cost_usd": self.cost_usd,
            "memory_per_gpu_gib": self.memory_per_gpu_gib,
            "memory_breakdown_gib": dict(self.memory_breakdown_gib),
            "memory_usable_gib": self.memory_usable_gib,
            "fits": self.fits,
            "model_states_zero_paper_gib": self.model_states_paper_gib,
            "cpu_offload_gib_per_node": self.cpu_offload_gib_per_node,
            "inference_gib": dict(self.inference_gib),
            "assumptions": list(self.assumptions),
            "suggestions": list(self.suggestions),
            "faster": self.faster,
        }


@dataclass(frozen=True)
class RunSpec:
    """One training run to estimate: what is trained, on what, on how much data, and how it is laid out.

    Every field after `hardware` defaults to what `llmgen estimate` assumes without flags. `estimate_run`
    validates the spec (errors name `llmgen estimate`'s flags), then resolves parallelism "auto"
    (`choose_parallelism`) and a missing micro-batch; the memory arithmetic works on resolved specs.
    """

    model: ModelConfig
    hardware: Hardware
    tokens: float | str = "chinchilla"  # a count, or "chinchilla": 20 per parameter (Hoffmann et al. 2022)
    params: float | None = None  # N in 6·N·D (what --params gave); None: the model's matmul weights
    parallelism: str = AUTO  # a Strategy, or "auto"
    micro_batch: int | None = None  # sequences per GPU per pass; None: the largest power of 2 up to 32 that fits
    seq_len: int | None = None  # None: the model's context
    grad_accum: int = 1
    tp: int = 1  # tensor-parallel degree (within a node)
    pp: int = 1  # pipeline stages
    offload: str | None = None  # one of OFFLOADS, or None
    activation_checkpointing: str = "none"  # one of formulas.CHECKPOINTING
    precision: str = Dtype.BFLOAT16.value  # one of precision.PRECISIONS
    mfu: float | None = None  # None: the fitted model of mfu.default_mfu
    price: float | None = None  # $ per GPU-hour; None: the catalogue's
    # With tp > 1, Megatron-LM's layout: norm and dropout activations sharded over the sequence (Korthikanti
    # et al. 2022) and a vocabulary-parallel head. reference_llm's tensor parallelism has neither.
    sequence_parallel: bool = False
    attention: str = "auto"  # one of ATTENTION

    @property
    def seq(self) -> int:
        """The training sequence length."""
        return self.model.block_size if self.seq_len is None else self.seq_len

    @property
    def batch(self) -> int:
        """The micro-batch the memory arithmetic uses (1 until one is chosen)."""
        return self.micro_batch or 1

    @property
    def dp(self) -> int:
        """The data-parallel degree: GPUs / (tp x pp)."""
        return self.hardware.n_gpus // (self.tp * self.pp)

    @property
    def flash(self) -> bool:
        """Whether the attention kernel keeps no score matrix. `auto` mirrors `Attention._use_sdpa` in
        reference_llm.model: SDPA (fused) everywhere except CPU bf16 up to 1024 tokens (manual)."""
        if self.attention != "auto":
            return self.attention == "flash"
        return not (self.hardware.is_cpu and self.precision != Dtype.FLOAT32 and self.seq <= 1024)

    def but(self, **changes: Any) -> RunSpec:
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)


def _memory(spec: RunSpec) -> tuple[dict[str, float], float, float]:
    """(breakdown in bytes per GPU, host bytes per node for offload, ZeRO-paper model states) of a spec
    whose parallelism is a strategy (not "auto")."""
    act_bytes = formulas.ACT_BYTES[spec.precision]
    strategy = spec.parallelism
    states = formulas.model_states(
        spec.model,
        strategy,
        spec.dp,
        spec.precision,
        spec.offload,
        shard=spec.tp * spec.pp,
        gpus_per_node=spec.hardware.gpus_per_node,
    )
    # reference_llm's pipeline runs each of the micro-batch's sequences as one pipeline micro-batch
    # (Schedule1F1B, n_microbatches = train.micro_batch): a 1F1B stage holds pp of them over L/pp blocks,
    # i.e. L blocks of one sequence (formulas.activation_bytes), whatever the micro-batch.
    batch = 1 if spec.pp > 1 else spec.batch
    activations = formulas.activation_bytes(
        spec.model,
        spec.seq,
        batch,
        act_bytes,
        spec.flash,
        spec.tp,
        spec.sequence_parallel,
        spec.activation_checkpointing,
        formulas.residual_bytes(strategy, spec.precision),
    )
    # reference_llm replicates the output head on the tp ranks, so each holds every vocabulary entry's
    # logits; --sequence-parallel models Megatron-LM's layout, whose head is vocabulary-parallel too.
    logits = formulas.logits_bytes(spec.model, spec.seq, batch, act_bytes, spec.tp if spec.sequence_parallel else 1)
    breakdown = {
        "weights": states.weights,
        "gradients": states.gradients,
        "optimizer": states.optimizer,
        "activations": activations,
        "logits": logits,
        "buffers": states.buffers,
    }
    paper = formulas.zero_paper_bytes(spec.model.num_params() / (spec.tp * spec.pp), strategy, spec.dp)
    return breakdown, states.cpu, paper


def _usable_gib(hardware: Hardware) -> float:
    if hardware.is_cpu:
        return hardware.gpu.memory_gib * CPU_USABLE_FRACTION
    return hardware.gpu.memory_gib - GPU_RESERVED_GIB


def _total_gib(spec: RunSpec) -> float:
    return sum(_memory(spec)[0].values()) / GIB


def _fits(spec: RunSpec) -> bool:
    return _total_gib(spec) <= _usable_gib(spec.hardware)


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------


def build_model(
    preset: str | None = None,
    params: float | None = None,
    arch: str | None = None,
    layers: int | None = None,
    d_model: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    ffn: int | None = None,
    vocab: int | None = None,
    seq_len: int | None = None,
    tied: bool | None = None,
) -> ModelConfig:
    """A ModelConfig from `--model PRESET`, `--params 7B` (aspect-ratio rule) or an exact shape; the shape
    flags override the preset's fields. Errors name the flag."""
    if preset is not None and params is not None:
        raise EstimateError("give --model or --params, not both")
    for flag, value in (
        ("--layers", layers),
        ("--d-model", d_model),
        ("--heads", heads),
        ("--kv-heads", kv_heads),
        ("--ffn", ffn),
        ("--vocab", vocab),
        ("--seq-len", seq_len),
    ):
        if value is not None and value <= 0:
            raise EstimateError(f"{flag} must be a positive integer, got {value}")
    if arch is not None and arch not in ARCHS:
        raise EstimateError(f"--arch must be {' or '.join(ARCHS)}, got {arch!r}")
    if preset is not None and preset not in PRESETS:
        close = difflib.get_close_matches(preset, list(PRESETS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise EstimateError(f"--model: unknown preset {preset!r}{hint}; known: {', '.join(PRESETS)}")
    if params is not None:
        if params <= 0:
            raise EstimateError(f"--params must be positive, got {params}")
        try:
            base = formulas.shape_for_params(params, arch or "llama", vocab, seq_len)
        except ValueError as err:
            raise EstimateError(f"--params {params:.3g}: {err}; give a smaller --vocab") from None
    elif preset is not None:
        base = ModelConfig.preset(preset)
    else:
        base = ModelConfig.preset("demo")
    fields = base.to_dict()
    if arch is not None and arch != base.arch:  # switch the family, keep the preset's sizes
        fields.update(
            {
                k: v
                for k, v in ModelConfig.for_arch(arch).to_dict().items()
                if k in ("norm", "position", "mlp", "bias", "tie_embeddings")
            }
        )
    overrides = {
        "n_layer": layers,
        "d_model": d_model,
        "n_head": heads,
        "n_kv_head": kv_heads,
        "ffn_hidden": ffn,
        "vocab_size": vocab,
        "block_size": seq_len,
        "tie_embeddings": tied,
    }
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


def _layout_problem(spec: RunSpec) -> str:
    """Why reference_llm cannot train `spec`'s tensor/pipeline layout ("" when it can): the training
    library's own rule, so that a plan never promises a layout the library cannot run."""
    if spec.tp == 1 and spec.pp == 1:
        return ""
    parallelism = Strategy.FSDP.value if spec.parallelism == AUTO else spec.parallelism
    try:
        check_parallel_layout(spec.model, parallelism, spec.tp, spec.pp, spec.hardware.n_gpus)
    except ConfigError as err:
        return str(err)
    return ""


def check_spec(spec: RunSpec) -> None:
    """EstimateError, naming `llmgen estimate`'s flags, when `spec` cannot be estimated or reference_llm
    cannot run its layout: what `estimate_run` checks first, for callers that only need the verdict."""
    _validate(spec)


def _validate(spec: RunSpec) -> None:
    model, hardware, parallelism, offload = spec.model, spec.hardware, spec.parallelism, spec.offload
    tp, pp, precision = spec.tp, spec.pp, spec.precision
    if parallelism not in PARALLELISMS:
        raise EstimateError(f"--parallelism must be one of {', '.join(PARALLELISMS)}; got {parallelism!r}")
    if precision not in PRECISIONS:
        raise EstimateError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if spec.activation_checkpointing not in formulas.CHECKPOINTING:
        raise EstimateError(
            f"--activation-checkpointing must be one of {', '.join(formulas.CHECKPOINTING)}; "
            f"got {spec.activation_checkpointing!r}"
        )
    if spec.attention not in ATTENTION:
        raise EstimateError(f"attention must be one of {', '.join(ATTENTION)}; got {spec.attention!r}")
    for flag, value in (("--tp", tp), ("--pp", pp), ("--grad-accum", spec.grad_accum), ("--seq-len", spec.seq)):
        if value <= 0:
            raise EstimateError(f"{flag} must be a positive integer, got {value}")
    if spec.micro_batch is not None and spec.micro_batch <= 0:
        raise EstimateError(f"--micro-batch must be a positive integer, got {spec.micro_batch}")
    if spec.seq > model.block_size:
        raise EstimateError(f"--seq-len {spec.seq} exceeds the model's context of {model.block_size} tokens")
    if tp > hardware.gpus_per_node:
        raise EstimateError(
            f"--tp {tp} is larger than the {hardware.gpus_per_node} GPU(s) per node of "
            f"{hardware}; tensor parallelism stays inside a node"
        )
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
            raise EstimateError(f"--offload must be {' or '.join(OFFLOADS)}; got {offload!r}")
        if parallelism in (Strategy.SINGLE, Strategy.DDP):
            raise EstimateError(f"--offload needs --parallelism zero1, zero2, zero3 or fsdp, not {parallelism}")
        if offload == Offload.PARAMS and parallelism in (Strategy.ZERO1, Strategy.ZERO2):
            raise EstimateError("--offload params needs --parallelism zero3 or fsdp")
        if offload == Offload.OPTIMIZER and parallelism == Strategy.FSDP:
            raise EstimateError(
                "--offload optimizer: FSDP offloads parameters and optimizer together; "
                "use --offload params (or --parallelism zero1/zero2/zero3)"
            )
    if hardware.is_cpu:
        if parallelism not in (AUTO, Strategy.SINGLE):
            raise EstimateError(
                f"--parallelism {parallelism} needs GPUs; on cpu the estimator models one process (single)"
            )
        if precision == FLOAT8 or tp > 1 or pp > 1 or offload:
            raise EstimateError(
                "--hardware cpu supports bfloat16 or float32 on one process, without --tp, --pp, --offload"
            )
    elif parallelism == Strategy.SINGLE and hardware.n_gpus > 1:
        raise EstimateError(
            f"--parallelism single uses one device, but --hardware {hardware} has "
            f"{hardware.n_gpus}; use ddp, zero1-3, fsdp or auto"
        )
    problem = _layout_problem(spec)
    if problem:
        raise EstimateError(f"--tp {tp} --pp {pp} --parallelism {parallelism}: reference_llm cannot run it: {problem}")
    if precision == FLOAT8 and hardware.gpu.fp8_tflops is None:
        fp8 = [name for name, gpu in KNOWN_GPUS.items() if gpu.fp8_tflops]
        raise EstimateError(
            f"--precision {FLOAT8}: {hardware.gpu.name} has no fp8 tensor cores; fp8 GPUs: {', '.join(fp8)}"
        )
    if spec.mfu is not None and not 0 < spec.mfu <= 1:
        raise EstimateError(f"--mfu must be in (0, 1], got {spec.mfu}")
    if spec.price is not None and spec.price < 0:
        raise EstimateError(f"--price must be zero or positive, got {spec.price}")
    tokens = spec.tokens
    if tokens != "chinchilla" and (isinstance(tokens, str) or tokens <= 0):
        raise EstimateError(f"--tokens must be positive or 'chinchilla', got {tokens!r}")


# ----------------------------------------------------------------------------------------------------
# Parallelism choice and suggestions
# ----------------------------------------------------------------------------------------------------


def _can_offload(strategy: str, offload: str | None) -> bool:
    """Whether `strategy` can offload `offload` (see `_validate`'s rules)."""
    if offload is None:
        return True
    if offload == Offload.PARAMS:
        return strategy in _SHARDS_PARAMS
    return strategy not in (Strategy.SINGLE, Strategy.DDP, Strategy.FSDP)


def choose_parallelism(spec: RunSpec) -> tuple[str, str]:
    """What parallelism `auto` means for `spec` (whose own parallelism is ignored): (strategy, one-sentence
    reason), judged at the spec's micro-batch (1 when it has none).

    One device (or the CPU): single. Otherwise ddp when model states and activations fit replicated,
    else the lowest ZeRO stage that fits (zero1, zero2), else FSDP full sharding.
    """
    strategy = _auto_strategy(spec)
    return strategy, explain_auto(spec.but(parallelism=strategy), spec.batch)


def _auto_strategy(spec: RunSpec) -> str:
    hardware = spec.hardware
    if hardware.is_cpu or hardware.n_gpus == 1:
        return Strategy.SINGLE.value
    if spec.tp > 1 or spec.pp > 1:
        return Strategy.FSDP.value  # the one strategy that carries tensor and pipeline parallelism
    for strategy in AUTO_ORDER:
        if _can_offload(strategy, spec.offload) and _fits(spec.but(parallelism=strategy.value)):
            return strategy.value
    return Strategy.FSDP.value


def explain_auto(run: RunSpec, chosen_at: int) -> str:
    """Why `auto` chose `run.parallelism` (at micro-batch `chosen_at`), with the memory figures of `run`
    itself, so that the reason and the estimate's memory row state the same numbers."""
    hardware, strategy = run.hardware, run.parallelism
    if hardware.is_cpu or hardware.n_gpus == 1:
        what = "the CPU" if hardware.is_cpu else f"one {hardware.gpu.name}"
        return f"{what} is one device, so no data parallelism is needed"
    if run.tp > 1 or run.pp > 1:
        return f"tp={run.tp} and pp={run.pp} run under fsdp only (FSDP2 over the data-parallel GPUs)"
    usable, need = _usable_gib(hardware), _total_gib(run)
    at = f"at micro-batch {run.batch}"
    tried = [s.value for s in AUTO_ORDER if _can_offload(s, run.offload)]
    lower = tried[: tried.index(strategy)] if strategy in tried else tried
    if not lower:
        return (
            f"model states and activations replicated on every GPU need {need:.1f} GiB per GPU {at}, "
            f"within the {usable:.1f} GiB usable on each {hardware.gpu.name}"
        )
    previous = lower[-1]
    previous_need = _total_gib(run.but(parallelism=previous, micro_batch=chosen_at))
    if need > usable:
        return (
            f"even full sharding needs {need:.1f} GiB per GPU {at}, more than the {usable:.1f} GiB usable "
            f"on each {hardware.gpu.name}; see the suggestions"
        )
    return (
        f"{previous} would need {previous_need:.1f} GiB per GPU at micro-batch {chosen_at}, more than the "
        f"{usable:.1f} GiB usable; {strategy} is the least sharding that fits ({need:.1f} GiB per GPU {at})"
    )


def _suggestions(spec: RunSpec) -> list[str]:
    """Single changes that make a resolved spec that does not fit, fit; least disruptive first."""
    tips: list[str] = []
    usable = _usable_gib(spec.hardware)
    strategy = spec.parallelism

    def add(change: RunSpec, text: str) -> None:
        need = _total_gib(change)
        if need <= usable:
            tips.append(f"{text} ({need:.1f} GiB per GPU)")

    if not spec.hardware.is_cpu and spec.hardware.n_gpus > 1:
        order = (Strategy.DDP, Strategy.ZERO1, Strategy.ZERO2, Strategy.ZERO3, Strategy.FSDP)
        for other in order[order.index(Strategy(strategy)) + 1 if strategy in order else 0 :]:
            if not _can_offload(other, spec.offload):
                continue
            before = len(tips)
            add(spec.but(parallelism=other.value), f"--parallelism {other}")
            if len(tips) > before:
                break
    if spec.activation_checkpointing == "none":
        add(spec.but(activation_checkpointing="selective"), "--activation-checkpointing selective")
    mb = spec.batch // 2
    while mb >= 1:
        before = len(tips)
        add(spec.but(micro_batch=mb), f"--micro-batch {mb} --grad-accum {spec.grad_accum * spec.batch // mb}")
        if len(tips) > before:
            break
        mb //= 2
    if spec.activation_checkpointing != "full":
        add(spec.but(activation_checkpointing="full"), "--activation-checkpointing full")
    tp = spec.tp * 2
    while tp <= spec.hardware.gpus_per_node and not spec.hardware.is_cpu:
        if spec.hardware.gpus_per_node % tp == 0 and not _layout_problem(spec.but(tp=tp)):
            before = len(tips)
            add(spec.but(tp=tp), f"--tp {tp}")
            if len(tips) > before:
                break
        tp *= 2
    if strategy in (Strategy.ZERO1, Strategy.ZERO2, Strategy.ZERO3) and not spec.offload:
        add(spec.but(offload=Offload.OPTIMIZER.value), "--offload optimizer")
    if not spec.hardware.is_cpu:
        sharded = strategy if strategy in _SHARDS_PARAMS else Strategy.FSDP.value
        per_node = spec.hardware.gpus_per_node
        for nodes in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
            if nodes <= spec.hardware.nodes:
                continue
            more = Hardware(nodes, per_node, spec.hardware.gpu)
            grown = spec.but(hardware=more, parallelism=sharded)
            if _fits(grown):
                change = f"--hardware {more}" + (f" --parallelism {sharded}" if sharded != strategy else "")
                add(grown, change)
                break
    if not tips:
        smallest = spec.but(
            parallelism=Strategy.FSDP.value if spec.hardware.n_gpus > 1 else strategy,
            activation_checkpointing="full",
            micro_batch=1,
        )
        tips.append(
            f"no single change fits; even fsdp (when several GPUs) with full checkpointing and micro-batch 1 "
            f"needs {_total_gib(smallest):.1f} GiB per GPU: use a bigger GPU or more of them"
        )
    return tips


# ----------------------------------------------------------------------------------------------------
# The estimate
# ----------------------------------------------------------------------------------------------------


def estimate_run(spec: RunSpec) -> Estimate:
    """Cost and memory of the training run `spec` describes. Parallelism "auto" is resolved by
    `choose_parallelism`; a missing micro-batch becomes the largest power of two up to 32 that fits (1 if
    none does). Raises EstimateError, naming `llmgen estimate`'s flag, for an impossible spec."""
    _validate(spec)
    model, hardware, precision = spec.model, spec.hardware, spec.precision
    n_params = model.num_params()
    flops_params = float(spec.params) if spec.params is not None else float(formulas.matmul_params(model))
    notes: list[str] = []
    if spec.tokens == "chinchilla":
        tokens = formulas.TOKENS_PER_PARAM * (spec.params or n_params)
        notes.append("tokens: 20 per parameter (Hoffmann et al. 2022)")
    else:
        tokens = float(spec.tokens)

    strategy = _auto_strategy(spec) if spec.parallelism == AUTO else spec.parallelism
    run = spec.but(parallelism=strategy, seq_len=spec.seq)
    if spec.micro_batch is None:
        mb = MAX_AUTO_MICRO_BATCH
        while mb > 1 and not _fits(run.but(micro_batch=mb)):
            mb //= 2
        run = run.but(micro_batch=mb)
        notes.append(
            f"micro-batch {mb}: the largest power of two up to {MAX_AUTO_MICRO_BATCH} that fits"
            if _fits(run)
            else "micro-batch 1: even one sequence per GPU does not fit (see the suggestions)"
        )
    # The reason states the memory of the run as estimated (its final micro-batch), as the table does.
    reason = explain_auto(run, spec.batch) if spec.parallelism == AUTO else "chosen with --parallelism"
    seq, tp, pp = run.seq, run.tp, run.pp

    # Time and cost
    dense = 6.0 * flops_params * tokens
    attention_flops = formulas.training_flops(model, tokens, seq)[1]
    peak = hardware.gpu.peak_tflops(precision)
    assert peak is not None  # float8 without fp8 cores was refused in _validate
    if run.mfu is None:
        mfu, mfu_notes = _default_mfu(run)
        notes.append("MFU (default) " + "; ".join(mfu_notes) + f" -> {mfu:.3f}")
    else:
        mfu = run.mfu
        notes.append(f"MFU {mfu:.3f} (given with --mfu)")
    gpu_hours = formulas.gpu_seconds(dense + attention_flops, peak, mfu) / 3600.0
    rate = hardware.gpu.price_per_hour if run.price is None else run.price
    if hardware.is_cpu:
        notes.append(f"cpu: {hardware.gpu.note}; your own machine, so no price unless --price")
    else:
        notes.append(
            f"{hardware.gpu.name}: {peak:g} TFLOP/s dense {precision} peak"
            + (f" ({hardware.gpu.note})" if hardware.gpu.note else "")
            + ", "
            + (
                f"${rate:.2f}/GPU-hour (given)"
                if run.price is not None
                else f"${rate:.2f}/GPU-hour (typical on-demand, {PRICES_AS_OF}; override with --price)"
            )
        )
    n_text = (
        "as given with --params"
        if spec.params is not None
        else "the matmul weights: blocks and output head, not the embedding lookup"
    )
    notes.append(f"time = (6·N·D + attention FLOPs) / (GPUs x peak x MFU), N = {flops_params:,.0f} ({n_text})")

    # Memory
    breakdown, cpu_bytes, paper = _memory(run)
    breakdown_gib = {k: v / GIB for k, v in breakdown.items()}
    total_gib = sum(breakdown_gib.values())
    usable = _usable_gib(hardware)
    fits = total_gib <= usable
    act_bytes = formulas.ACT_BYTES[precision]
    checkpointing = run.activation_checkpointing
    notes.append(
        f"activations: Korthikanti et al. 2022, {act_bytes}-byte elements, "
        + ("fused attention (no score matrix)" if run.flash else "manual attention (score matrix kept)")
        + (f", sequence parallel over tp={tp}" if tp > 1 and run.sequence_parallel else "")
        + (f", checkpointing {checkpointing}" if checkpointing != "none" else "")
    )
    notes.append(
        "memory usable: "
        + (
            f"{CPU_USABLE_FRACTION:.0%} of {hardware.gpu.memory_gib:.1f} GiB RAM"
            if hardware.is_cpu
            else f"{hardware.gpu.memory_gib:g} GiB less {GPU_RESERVED_GIB:g} GiB for the CUDA "
            "context and library workspaces"
        )
    )
    if Strategy(strategy).zero_stage:
        notes.append(
            "model states follow DeepSpeed's own accounting (fp32 gradient partitions included); "
            "the ZeRO paper's 2+2+12 bytes/param figure is shown beside it"
        )
    kv = formulas.kv_cache_bytes(model, run.batch, seq, 2, tp)
    inference = {
        "weights_bf16": 2.0 * n_params / (tp * pp) / GIB,
        "kv_cache": kv / GIB,
        "total": (2.0 * n_params / (tp * pp) + kv) / GIB,
    }
    wall_hours = gpu_hours / hardware.n_gpus
    return Estimate(
        model=model.name,
        params=n_params,
        params_non_embedding=model.num_params(include_embeddings=False),
        flops_params=flops_params,
        flops_params_source=n_text,
        tokens=tokens,
        seq_len=seq,
        flops=dense,
        flops_attention=attention_flops,
        flops_total=dense + attention_flops,
        hardware=str(hardware),
        n_gpus=hardware.n_gpus,
        strategy=strategy,
        strategy_reason=reason,
        tp=tp,
        pp=pp,
        dp=run.dp,
        micro_batch=run.batch,
        grad_accum=run.grad_accum,
        precision=precision,
        activation_checkpointing=checkpointing,
        offload=run.offload,
        peak_tflops=peak,
        mfu=mfu,
        price_per_gpu_hour=rate,
        gpu_hours=gpu_hours,
        wall_hours=wall_hours,
        cost_usd=gpu_hours * rate,
        memory_breakdown_gib=breakdown_gib,
        memory_per_gpu_gib=total_gib,
        memory_usable_gib=usable,
        fits=fits,
        model_states_paper_gib=paper / GIB,
        cpu_offload_gib_per_node=cpu_bytes / GIB,
        inference_gib=inference,
        assumptions=notes,
        suggestions=[] if fits else _suggestions(run),
        faster=_faster(run, dense + attention_flops, peak) if wall_hours > LONG_RUN_HOURS else None,
    )


def _default_mfu(run: RunSpec) -> tuple[float, list[str]]:
    """`mfu.default_mfu` for a resolved spec."""
    recompute = formulas.recompute_flops_factor(run.model, run.seq, run.activation_checkpointing)
    return default_mfu(
        run.hardware.gpu,
        run.model,
        run.seq,
        run.hardware.nodes,
        run.precision,
        recompute,
        run.pp,
        run.grad_accum,
        run.offload,
    )


def _faster(run: RunSpec, flops: float, peak: float) -> str:
    """The smallest hardware of the same kind (full nodes of at least 8 GPUs, doubling the node count)
    that trains `run` in about LONG_RUN_HOURS, with its wall time at its own MFU; from a CPU, one H100."""

    def wall(hardware: Hardware, peak_tflops: float, precision: str) -> float:
        grown = run.but(hardware=hardware, precision=precision)
        mfu = run.mfu if run.mfu is not None and not run.hardware.is_cpu else _default_mfu(grown)[0]
        return formulas.gpu_seconds(flops, peak_tflops, mfu) / 3600.0 / hardware.n_gpus

    if run.hardware.is_cpu:
        h100 = Hardware(1, 1, KNOWN_GPUS["H100-SXM"])
        hours = wall(h100, h100.gpu.bf16_tflops, Dtype.BFLOAT16.value)
        return f"--hardware {h100} would take about {duration(hours)}"
    per_node = max(run.hardware.gpus_per_node, 8)
    candidates = [Hardware(2**k, per_node, run.hardware.gpu) for k in range(13)]
    larger = [hw for hw in candidates if hw.n_gpus > run.hardware.n_gpus]
    best = next((hw for hw in larger if wall(hw, peak, run.precision) <= LONG_RUN_HOURS), larger[-1])
    return f"--hardware {best} would take about {duration(wall(best, peak, run.precision))}"
