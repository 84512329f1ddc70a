"""Run configuration: dataclasses loaded from a TOML file plus `section.key=value` overrides.

A training config looks like this (every key optional except where the dataclass has no default):

    [model]
    preset = "demo"          # any ModelConfig preset; other keys here override its fields

    [data]
    corpus = "data/shakespeare.txt"   # a file, folder or glob: text, JSON Lines, Parquet, ... (docs/data.md)
    tokenizer = "bpe"                 # "char" | "bpe" (from scratch) | "hf-bpe" (HF tokenizers)
    vocab_size = 1024                 # for the BPE tokenizers; "char" takes the corpus' alphabet

    [train]
    max_steps = 2000

    [distributed]
    strategy = "single"

Unknown sections or keys, wrong types and impossible values raise `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tomllib
import types
import typing
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from reference_llm.errors import ConfigError
from reference_llm.model.config import ModelConfig


# The vocabulary every stage shares: the training config, llmgen's questions and estimator, the Copier
# template and the distributed engines all take their names from these (a test holds copier.yml to them).
class Strategy(StrEnum):
    """How training is split over devices: `distributed.strategy`."""

    SINGLE = "single"  # one process, one device
    DDP = "ddp"  # PyTorch DistributedDataParallel: everything replicated
    FSDP = "fsdp"  # PyTorch FSDP2 full sharding
    ZERO1 = "zero1"  # DeepSpeed ZeRO stage 1: optimizer states sharded
    ZERO2 = "zero2"  # ... and gradients
    ZERO3 = "zero3"  # ... and parameters

    @property
    def zero_stage(self) -> int:
        """The DeepSpeed ZeRO stage this strategy runs, 0 when it does not use DeepSpeed."""
        return int(self[-1]) if self.startswith("zero") else 0


class Dtype(StrEnum):
    """The precision training computes in: `train.dtype`, spelt as torch spells its dtypes."""

    AUTO = "auto"  # what `auto_dtype` says for the device the run lands on
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"  # autocast: matmuls in bf16, weights and optimizer states in fp32


class Offload(StrEnum):
    """What a sharded run keeps in host memory: `distributed.offload` (DeepSpeed ZeRO; llmgen's estimator
    also models FSDP's)."""

    NONE = "none"
    OPTIMIZER = "optimizer"
    PARAMS = "params"


# CPU flags (as Linux's /proc/cpuinfo names them) of the instructions that compute bf16 dot products:
# AVX512-BF16 (Intel Cooper Lake and later, AMD Zen 4 and later) and AMX-BF16 (Sapphire Rapids and later).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def auto_dtype(device_type: str, gpu_bf16: bool = False, cpu_flags: Collection[str] = ()) -> Dtype:
    """What `train.dtype = "auto"` trains in: bfloat16 where the device computes in bf16 natively, else
    float32. The one rule for both the run (reference_llm.train.perf.resolve_dtype) and llmgen's plans.

    `device_type` "cuda" (NVIDIA or ROCm): `gpu_bf16` says whether the GPU has bf16 tensor cores (NVIDIA
    compute capability 8.0 and later: A100, H100, RTX 30xx/40xx, L40S; AMD MI200/MI300). Any other
    device is a CPU, judged by `cpu_flags` (`BF16_CPU_FLAGS`), where native bf16 matmuls run 2-3x faster
    than fp32. Without native support bf16 is emulated, slower than fp32, and fp16 instead would need
    loss scaling, which the training loop does not do.
    """
    if device_type == "cuda":
        native = gpu_bf16
    else:
        native = not BF16_CPU_FLAGS.isdisjoint(cpu_flags)
    return Dtype.BFLOAT16 if native else Dtype.FLOAT32


def host_cpu_flags() -> frozenset[str] | None:
    """This machine's CPU flags from /proc/cpuinfo, or None where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return frozenset(text.split())


@dataclass
class DataSource:
    """One `[[data.sources]]` table: a file, folder or glob pattern, how to read it, and its share."""

    path: str
    weight: float | None = None  # share of the train split; None for every source: their natural sizes
    text_field: str = "text"  # JSON/CSV/Parquet/Arrow field with the text; dots reach nested fields
    format: str = ""  # "" infers it from each file name (see reference_llm.data.sources.FORMATS)
    name: str = ""  # how reports and meta.json name the source ("": its path)

    @property
    def label(self) -> str:
        return self.name or self.path


@dataclass
class DataConfig:
    corpus: str = "data/shakespeare.txt"  # a file, folder or glob; not used when `sources` is given
    text_field: str = "text"  # for a corpus of records (JSON Lines, Parquet, ...)
    format: str = ""  # "" infers each file's format from its name
    sources: list[DataSource] = field(default_factory=list)  # [[data.sources]]: several, with weights
    tokenizer: str = "bpe"  # "char" | "bpe" | "hf-bpe"
    vocab_size: int = 1024
    cache_dir: str = "data/cache"  # tokenizer and token shards are built here once, keyed by content hash
    val_fraction: float = 0.1  # fraction of documents (or of the text, for a single document) held out
    sampling: str = "random"  # "random": windows drawn with replacement; "epoch": each window once per epoch
    skip_bad: bool = False  # leave out (and count) unreadable records instead of stopping at the first
    strict: bool = False  # any file of the corpus that is not read is an error
    workers: int = 0  # processes that clean and tokenise (0: one per CPU); the result does not depend on it
    chunk_mb: float = 32.0  # text in flight at once, in MB: bounds memory; the result does not depend on it

    def __post_init__(self) -> None:
        self.sources = [_data_source(i, s) for i, s in enumerate(self.sources)]
        weights = [s.weight for s in self.sources]
        if any(w is not None for w in weights) and any(w is None for w in weights):
            raise ConfigError("data.sources: give every source a weight, or none (natural proportions)")
        if any(w is not None and not w > 0 for w in weights):
            raise ConfigError(f"data.sources: weights must be positive, got {weights}")
        if self.workers < 0 or not self.chunk_mb > 0:
            raise ConfigError(f"data.workers must be >= 0 and data.chunk_mb > 0; got {self.workers}, {self.chunk_mb}")

    def source_list(self) -> list[DataSource]:
        """The configured sources, or the single `corpus` when there are none."""
        return self.sources or [DataSource(self.corpus, text_field=self.text_field, format=self.format)]


def _data_source(index: int, value: Any) -> DataSource:
    """A DataSource from a `[[data.sources]]` table (or one already built), checked key by key."""
    if isinstance(value, DataSource):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"data.sources[{index}] must be a table with a path, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(DataSource)}
    unknown = set(value) - set(fields)
    if unknown or "path" not in value:
        raise ConfigError(
            f"data.sources[{index}]: needs `path`; unknown key(s) {', '.join(sorted(unknown)) or 'none'};"
            f" known: {', '.join(fields)}"
        )
    return DataSource(**{k: coerce_value(f"data.sources[{index}].{k}", v, fields[k].type) for k, v in value.items()})


@dataclass
class TrainConfig:
    seed: int = 1337
    micro_batch: int = 16  # sequences per forward/backward on one device
    grad_accum: int = 1  # micro-batches per optimizer step
    seq_len: int = 0  # 0: the model's block_size
    max_steps: int = 2000
    max_minutes: float = 0.0  # stop after this much training time (0: no limit); counts as finished
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: str = Dtype.AUTO.value  # a Dtype: auto is bf16 autocast where the device has native bf16
    compile: bool | str = False  # true, false or "auto": compile when it pays off (train.perf.AutoCompile)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    activation_checkpointing: str = "none"  # "none" | "selective" (attention scores) | "full" (whole blocks)
    log_interval: int = 10
    metrics_file: str = "metrics.jsonl"  # relative to checkpoint.dir
    # where metrics go, any of LOGGERS (reference_llm.train.loggers): the JSONL file, TensorBoard, W&B
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])


@dataclass
class EvalConfig:
    interval: int = 250  # steps between evaluations (0: only at the end)
    iters: int = 20  # batches per evaluation


@dataclass
class CheckpointConfig:
    dir: str = "runs/default"
    interval: int = 500  # steps between checkpoints (0: only at the end)
    keep: int = 2  # most recent checkpoints to keep


@dataclass
class DistributedConfig:
    strategy: str = Strategy.SINGLE.value  # a Strategy
    deepspeed_config: str = "configs/deepspeed.json"
    offload: str = Offload.NONE.value  # an Offload (DeepSpeed ZeRO only)
    # Model-parallel degrees (strategy fsdp only; `check_parallel_layout`): tensor parallelism splits each
    # block's heads and MLP over `tp` ranks, pipeline parallelism the blocks over `pp` stages; the
    # remaining world_size / (tp * pp) ranks are data-parallel (FSDP2).
    tp: int = 1
    pp: int = 1


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig.preset("demo"))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.block_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# A TOML file of settings that every command reading a run config applies over its config file.
OVERLAY_ENV = "REFERENCE_LLM_OVERLAY"
_OVERLAY_NOTED: set[tuple[str, tuple[str, ...]]] = set()

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "checkpoint": CheckpointConfig,
    "distributed": DistributedConfig,
}
# `train.loggers` may name these; the sinks themselves live in reference_llm.train.loggers.
LOGGERS = ("jsonl", "tensorboard", "wandb")
# Values stay plain strings in a RunConfig (so that it serialises anywhere); these say which are allowed.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.tokenizer": ("char", "bpe", "hf-bpe"),
    "data.sampling": ("random", "epoch"),
    "train.dtype": tuple(Dtype),
    "train.activation_checkpointing": ("none", "selective", "full"),
    "distributed.strategy": tuple(Strategy),
    "distributed.offload": tuple(Offload),
}


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML file (or start from defaults when `path` is None) and apply `key=value` overrides."""
    return config_from_dict(read_config_file(path, overrides))


def read_config_file(
    path: str | Path | None, overrides: Sequence[str] = (), sections: Collection[str] | None = None
) -> dict[str, Any]:
    """The raw sections of a TOML file (empty when `path` is None), then the overlay named by
    $REFERENCE_LLM_OVERLAY (`sections`: those the caller reads, default a run config's), then the
    `section.key=value` overrides; not yet checked against any schema."""
    raw = _read_toml(Path(path)) if path is not None else {}
    _apply_overlay(raw, {"model", *SECTIONS} if sections is None else sections)
    for item in overrides:
        section, key, value = parse_override(item)
        raw.setdefault(section, {})[key] = value
    return raw


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def _apply_overlay(raw: dict[str, Any], sections: Collection[str]) -> None:
    """Merge the TOML file named by $REFERENCE_LLM_OVERLAY into `raw`, key by key. One overlay shrinks
    every stage of a project at once (e.g. to run all of its commands at tiny scale), so sections the
    calling command does not read are left out rather than refused; the command line still wins."""
    name = os.environ.get(OVERLAY_ENV)
    if not name:
        return
    applied = []
    for section, values in _read_toml(Path(name)).items():
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: [{section}] must be a table of keys ({OVERLAY_ENV})")
        if section in sections:
            raw.setdefault(section, {}).update(values)
            applied.append(section)
    if applied and (name, tuple(applied)) not in _OVERLAY_NOTED:  # once per process, not per config read
        _OVERLAY_NOTED.add((name, tuple(applied)))
        print(f"note: {OVERLAY_ENV}={name} sets [{'], ['.join(applied)}] over the config", file=sys.stderr)


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    unknown = set(raw) - set(SECTIONS) - {"model"}
    if unknown:
        raise ConfigError(
            f"unknown config section(s): {', '.join(sorted(unknown))}; known: model, {', '.join(SECTIONS)}"
        )
    sections = {name: build_section(name, cls, raw.get(name, {})) for name, cls in SECTIONS.items()}
    model_raw = dict(raw.get("model", {}))
    preset = model_raw.pop("preset", "demo")
    model_fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    unknown_model = set(model_raw) - set(model_fields)
    if unknown_model:
        raise ConfigError(f"unknown key(s) in [model]: {', '.join(sorted(unknown_model))}")
    model_values = {k: coerce_value(f"model.{k}", v, model_fields[k].type) for k, v in model_raw.items()}
    config = RunConfig(model=ModelConfig.preset(preset, **model_values), **sections)
    _check(config)
    return config


def stored_run_config(data: dict[str, Any]) -> RunConfig:
    """Rebuild the RunConfig that `RunConfig.to_dict()` stored (in a checkpoint's state.json): every model
    field rather than a preset, and every section, each checked as a config file's would be. Raises
    KeyError for a missing section, TypeError or ConfigError for a bad value."""
    sections = {name: build_section(name, cls, data[name]) for name, cls in SECTIONS.items()}
    return RunConfig(model=ModelConfig.from_dict(data["model"]), **sections)


def build_section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(sorted(unknown))}; known: {', '.join(fields)}")
    typed = {k: coerce_value(f"{name}.{k}", v, fields[k].type) for k, v in values.items()}
    for key, value in typed.items():
        allowed = CHOICES.get(f"{name}.{key}")
        if allowed and value not in allowed:
            raise ConfigError(f"{name}.{key} must be one of {', '.join(allowed)}; got {value!r}")
    return cls(**typed)


def coerce_value(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a dataclass field's annotation (a string under `from __future__`)."""
    expected = _resolve(annotation)
    if type(None) in expected and value is None:
        return None
    if isinstance(value, bool):  # bool is an int in Python; accept it only where bool is expected
        if bool in expected:
            return value
    elif float in expected and isinstance(value, (int, float)):
        return float(value)
    elif any(t is not bool and isinstance(value, t) for t in expected):
        return value
    names = " or ".join(t.__name__ for t in expected if t is not type(None))
    raise ConfigError(f"{key} must be {names}, got {value!r}")


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None), "list": list}


def _resolve(annotation: Any) -> tuple[type, ...]:
    if isinstance(annotation, str):
        # "list[DataSource]" checks as a list; its items are checked by the dataclass that holds it
        return tuple(_TYPES[part.strip().split("[")[0]] for part in annotation.split("|"))
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def parse_override(item: str) -> tuple[str, str, Any]:
    """`train.lr=3e-4` -> ("train", "lr", 0.0003). Values parse as TOML, falling back to a string."""
    key, sep, text = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.max_steps=100)")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return section, name, value


def _check(config: RunConfig) -> None:
    """Cross-field checks that no single section can make."""
    t = config.train
    for key in ("micro_batch", "grad_accum", "max_steps"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key} must be positive, got {getattr(t, key)}")
    if t.seq_len < 0 or config.seq_len > config.model.block_size:
        raise ConfigError(
            f"train.seq_len={t.seq_len} must be between 1 and model.block_size="
            f"{config.model.block_size} (0 means block_size)"
        )
    if not 0 < t.lr or t.min_lr < 0 or t.min_lr > t.lr:
        raise ConfigError(f"need 0 <= train.min_lr <= train.lr and lr > 0; got lr={t.lr}, min_lr={t.min_lr}")
    unknown = [name for name in t.loggers if name not in LOGGERS]
    if unknown:
        raise ConfigError(f"train.loggers: unknown logger {unknown[0]!r}; known: {', '.join(LOGGERS)}")
    d = config.distributed
    check_parallel_layout(config.model, d.strategy, d.tp, d.pp)
    if d.pp > 1 and t.micro_batch < d.pp:
        raise ConfigError(
            f"train.micro_batch={t.micro_batch} must be at least distributed.pp={d.pp}: the pipeline runs each "
            f"sequence of a micro-batch as one of its micro-batches, and needs one per stage to fill"
        )
    if not 0.0 < config.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {config.data.val_fraction}")
    if config.data.tokenizer != "char" and config.data.vocab_size < 257:
        raise ConfigError(f"data.vocab_size must be at least 257 for byte-level BPE, got {config.data.vocab_size}")


def check_parallel_layout(model: ModelConfig, strategy: str, tp: int, pp: int, world_size: int | None = None) -> None:
    """The one rule for which tensor/pipeline-parallel layouts the library runs (the training engines
    and llmgen's planner both ask it): `ConfigError` naming both sides and what would work.
    `world_size`, when known, must be a multiple of tp * pp (the rest is the data-parallel degree)."""
    for key, value in (("tp", tp), ("pp", pp)):
        if value < 1:
            raise ConfigError(f"distributed.{key} must be at least 1, got {value}")
    if tp == 1 and pp == 1:
        return
    if strategy != Strategy.FSDP:
        raise ConfigError(
            f"distributed.tp={tp} and pp={pp} need distributed.strategy=fsdp (FSDP2 over the data-parallel "
            f"ranks); {strategy} cannot carry them: use strategy=fsdp, or tp=1 and pp=1 with {strategy}"
        )
    if tp > 1:
        for key in ("n_head", "n_kv_head", "ffn_hidden"):
            count = getattr(model, key)
            if count % tp:
                raise ConfigError(
                    f"distributed.tp={tp} must divide model.{key}={count} (each rank takes 1/tp of them); "
                    f"tp could be {_divisors(math.gcd(model.n_head, model.n_kv_head or 0, model.ffn_hidden or 0))}"
                )
    if pp > 1:
        if model.n_layer % pp:
            raise ConfigError(
                f"distributed.pp={pp} must divide model.n_layer={model.n_layer} (each stage runs as many "
                f"blocks); pp could be {_divisors(model.n_layer)}"
            )
        if model.tie_embeddings:
            raise ConfigError(
                f"distributed.pp={pp} needs model.tie_embeddings=false: the embedding lives on the first "
                f"stage and the output head on the last; untie them or use pp=1"
            )
        if tp > 1:
            raise ConfigError(f"distributed.pp={pp} with tp={tp} is not supported yet; use pp or tp alone")
    if world_size is not None:
        if world_size % (tp * pp):
            raise ConfigError(
                f"{world_size} processes cannot be split as tp={tp} x pp={pp} x data-parallel: launch a "
                f"multiple of tp*pp={tp * pp} processes, or change distributed.tp/pp"
            )
        if pp > 1 and world_size != pp:
            raise ConfigError(
                f"distributed.pp={pp} on {world_size} processes would add data parallelism to the pipeline, "
                f"which is not supported yet: launch exactly {pp} processes"
            )


def _divisors(n: int) -> str:
    return ", ".join(str(k) for k in range(1, n + 1) if n % k == 0)
