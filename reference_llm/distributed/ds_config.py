"""The DeepSpeed JSON config: what it must say for a run config, and where it disagrees with one.

DeepSpeed owns the batch arithmetic `train_batch_size = train_micro_batch_size_per_gpu ×
gradient_accumulation_steps × data-parallel world size` and refuses to start when the three fields do
not multiply out. Our training loop owns micro-batch, accumulation and clipping too (configs/train.toml),
so the two files must agree; `disagreements` lists every place they do not, in words a user can act on.
Pure Python (no DeepSpeed import), so `llmgen check` can run it on a login node.

Reference: https://www.deepspeed.ai/docs/config-json/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reference_llm.config import Offload, RunConfig, Strategy
from reference_llm.errors import DistributedError

# strategy -> ZeRO stage, for the strategies DeepSpeed runs.
STAGES = {strategy.value: strategy.zero_stage for strategy in Strategy if strategy.zero_stage}

# The training loop logs; DeepSpeed's own progress line every `steps_per_print` steps would duplicate it.
QUIET_STEPS_PER_PRINT = 1_000_000_000


def build(run_config: RunConfig, world_size: int, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed config for one run config: what a generated project's configs/deepspeed.json holds
    (llmgen calls this and the template only writes the result out)."""
    t, d = run_config.train, run_config.distributed
    stage = STAGES[d.strategy]
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "offload_optimizer": _offload(d.offload != Offload.NONE),
    }
    if stage == 3:  # only stage 3 partitions the parameters, so only it can offload them
        zero["offload_param"] = _offload(d.offload == Offload.PARAMS)
    return {
        "train_batch_size": t.micro_batch * t.grad_accum * world_size,
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.grad_clip,
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        # The optimizer is the training loop's torch AdamW (or DeepSpeed's CPU Adam when offloading).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": QUIET_STEPS_PER_PRINT,
    }


def _offload(on: bool) -> dict[str, Any]:
    # Pinned (page-locked) host memory makes the GPU<->CPU copies asynchronous and about twice as fast.
    return {"device": "cpu", "pin_memory": True} if on else {"device": "none"}


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DistributedError(
            f"DeepSpeed config {path} not found (distributed.deepspeed_config): a ZeRO "
            f"strategy needs one; generate the project with parallelism=zero1|zero2|zero3 "
            f"or see docs/distributed.md"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DistributedError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DistributedError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _enabled(section: Any) -> bool:
    return isinstance(section, dict) and bool(section.get("enabled", False))


def _offload_device(zero: dict[str, Any], key: str) -> str:
    section = zero.get(key)
    return str(section.get("device", "none")) if isinstance(section, dict) else "none"


def disagreements(
    ds: dict[str, Any], run_config: RunConfig, world_size: int, bf16: bool | None, name: str = "deepspeed.json"
) -> list[str]:
    """Every way `ds` disagrees with `run_config` at `world_size` processes; empty when they agree.

    Batch fields absent from `ds` count as agreeing (`complete` fills them in); `bf16=None` skips the
    precision check (when the target device, hence what train.dtype=auto means, is unknown).
    """
    t, d = run_config.train, run_config.distributed
    problems: list[str] = []

    def differs(key: str, expected: Any, reason: str) -> None:
        if key in ds and ds[key] != expected:
            problems.append(f"{name} {key}={ds[key]!r} but {reason}")

    expected_global = t.micro_batch * t.grad_accum * world_size
    differs("train_micro_batch_size_per_gpu", t.micro_batch, f"train.micro_batch={t.micro_batch}")
    differs("gradient_accumulation_steps", t.grad_accum, f"train.grad_accum={t.grad_accum}")
    differs(
        "train_batch_size",
        expected_global,
        f"train.micro_batch × train.grad_accum × world size = {t.micro_batch} × {t.grad_accum} × "
        f"{world_size} = {expected_global}",
    )
    clip = ds.get("gradient_clipping", 0.0)
    if float(clip) != float(t.grad_clip):
        problems.append(f"{name} gradient_clipping={clip!r} but train.grad_clip={t.grad_clip}")
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        problems.append(f"{name} zero_optimization must be an object")
        zero = {}
    if d.strategy in STAGES and zero.get("stage", 0) != STAGES[d.strategy]:
        problems.append(
            f"{name} zero_optimization.stage={zero.get('stage', 0)!r} but "
            f"distributed.strategy={d.strategy} needs stage {STAGES[d.strategy]}"
        )
    if _enabled(ds.get("fp16")):
        problems.append(f"{name} enables fp16, which the training loop does not support; use bf16 or fp32")
    if bf16 is not None and _enabled(ds.get("bf16")) != bf16:
        problems.append(
            f"{name} bf16.enabled={_enabled(ds.get('bf16'))} but train.dtype={t.dtype} trains in "
            f"{'bf16' if bf16 else 'fp32'} here"
        )
    want_opt = "cpu" if d.offload != Offload.NONE else "none"
    want_param = "cpu" if d.offload == Offload.PARAMS else "none"
    for key, want in (("offload_optimizer", want_opt), ("offload_param", want_param)):
        have = _offload_device(zero, key)
        if have != want:
            problems.append(
                f"{name} zero_optimization.{key}.device={have!r} but distributed.offload={d.offload} needs {want!r}"
            )
    if d.offload == Offload.PARAMS and d.strategy != Strategy.ZERO3:
        problems.append(
            f"distributed.offload=params needs strategy zero3 (parameters are only partitioned there); got {d.strategy}"
        )
    for key in ("optimizer", "scheduler"):
        if key in ds:
            problems.append(f"{name} has an {key!r} section, but the training loop supplies the {key}; remove it")
    return problems


def complete(ds: dict[str, Any], run_config: RunConfig, world_size: int) -> dict[str, Any]:
    """`ds` with absent batch fields filled in from the run config (present ones were checked)."""
    t = run_config.train
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch * t.grad_accum * world_size,
        **ds,
    }
