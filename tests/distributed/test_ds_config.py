"""The DeepSpeed JSON config against the training config: each disagreement is found and named."""

from __future__ import annotations

import pytest

from reference_llm.config import config_from_dict
from reference_llm.distributed import ds_config


def run_config(strategy: str = "zero2", offload: str = "none", **train):
    return config_from_dict(
        {
            "train": {"micro_batch": 4, "grad_accum": 8, "grad_clip": 1.0, **train},
            "distributed": {"strategy": strategy, "offload": offload},
        }
    )


# Parameter offload exists only at stage 3 (see test_parameter_offload_needs_stage_3).
@pytest.mark.parametrize(
    ("strategy", "offload"),
    [
        (s, o)
        for s in ("zero1", "zero2", "zero3")
        for o in ("none", "optimizer", "params")
        if o != "params" or s == "zero3"
    ],
)
def test_built_config_agrees_with_its_run_config(strategy, offload):
    cfg = run_config(strategy, offload)
    ds = ds_config.build(cfg, world_size=32, bf16=True)
    assert ds["train_batch_size"] == 4 * 8 * 32
    assert ds["zero_optimization"]["stage"] == int(strategy[-1])
    assert ds_config.disagreements(ds, cfg, 32, bf16=True) == []


def test_batch_arithmetic_is_checked_against_the_world_size():
    cfg = run_config()
    ds = ds_config.build(cfg, world_size=32, bf16=False)
    problems = ds_config.disagreements(ds, cfg, 16, bf16=False)
    assert problems == [
        "deepspeed.json train_batch_size=1024 but train.micro_batch × train.grad_accum × world size = 4 × 8 × 16 = 512"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"train_micro_batch_size_per_gpu": 2}, "train_micro_batch_size_per_gpu=2 but train.micro_batch=4"),
        ({"gradient_accumulation_steps": 1}, "gradient_accumulation_steps=1 but train.grad_accum=8"),
        ({"gradient_clipping": 0.5}, "gradient_clipping=0.5 but train.grad_clip=1.0"),
        ({"bf16": {"enabled": True}}, "bf16.enabled=True but train.dtype=auto trains in fp32 here"),
        ({"fp16": {"enabled": True}}, "enables fp16, which the training loop does not support"),
        ({"optimizer": {"type": "Adam"}}, "has an 'optimizer' section, but the training loop supplies the optimizer"),
        ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage=3 but distributed.strategy=zero2 needs stage 2"),
        (
            {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
            "zero_optimization.offload_optimizer.device='cpu' but distributed.offload=none needs 'none'",
        ),
    ],
)
def test_each_disagreement_is_named(change, expected):
    cfg = run_config()
    ds = {**ds_config.build(cfg, world_size=2, bf16=False), **change}
    problems = ds_config.disagreements(ds, cfg, 2, bf16=False)
    assert len(problems) == 1 and expected in problems[0], problems


def test_absent_batch_fields_are_filled_in_and_clipping_must_be_explicit():
    cfg = run_config()
    minimal = {"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0}
    assert ds_config.disagreements(minimal, cfg, 4, bf16=False) == []
    full = ds_config.complete(minimal, cfg, 4)
    assert (full["train_micro_batch_size_per_gpu"], full["gradient_accumulation_steps"], full["train_batch_size"]) == (
        4,
        8,
        128,
    )
    # DeepSpeed's default is no clipping at all, so a config without it disagrees with grad_clip=1.0.
    assert ds_config.disagreements({"zero_optimization": {"stage": 2}}, cfg, 4, bf16=False) == [
        "deepspeed.json gradient_clipping=0.0 but train.grad_clip=1.0"
    ]


def test_parameter_offload_needs_stage_3():
    cfg = run_config("zero2", "params")
    problems = ds_config.disagreements(ds_config.build(cfg, 2, bf16=False), cfg, 2, bf16=False)
    assert any("offload=params needs strategy zero3" in p for p in problems)


def test_precision_check_can_be_skipped_when_the_target_is_unknown():
    cfg = run_config()
    ds = ds_config.build(cfg, world_size=2, bf16=True)
    assert ds_config.disagreements(ds, cfg, 2, bf16=None) == []
