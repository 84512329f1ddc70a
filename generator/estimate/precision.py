"""Precision names in llmgen: reference_llm's `Dtype` names, plus float8, which only the estimator models.

reference_llm trains in float32 or bfloat16 (`train.dtype`, with "auto" for whichever the device runs
natively, `reference_llm.config.auto_dtype`); the estimator also prices float8 matmuls on GPUs that have
fp8 tensor cores. Answers, the template, estimates and their JSON all use these full names. People often
type the short forms bf16, fp32 and fp8, so the command line accepts those and turns them into the full
names at once (`canonical_precision`); nothing after it sees a short name.
"""

from __future__ import annotations

from reference_llm.config import Dtype

FLOAT8 = "float8"  # fp8 matmuls in the linear layers (Transformer Engine style), bf16 activations
# What a training step can compute in, as the estimator prices it; its default first.
PRECISIONS: tuple[str, ...] = (Dtype.BFLOAT16.value, Dtype.FLOAT32.value, FLOAT8)
SHORT_NAMES: dict[str, str] = {"bf16": Dtype.BFLOAT16.value, "fp32": Dtype.FLOAT32.value, "fp8": FLOAT8}


def canonical_precision(name: str) -> str:
    """`name` with a short form (bf16, fp32, fp8; any case) replaced by its full name; any other text is
    returned stripped but otherwise as given, for the caller to check against its own choices."""
    name = name.strip()
    return SHORT_NAMES.get(name.lower(), name)
