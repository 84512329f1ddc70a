"""Checks on everything a checkpoint holds, made before anything is built from it.

A checkpoint may come from someone else, or from a run killed half-way, so nothing in it is trusted:
JSON is read with size and nesting limits, every value that is used is typed and range-checked, and
every tensor's name, dtype and shape is compared with what it will be loaded into. A wrongly shaped
optimizer moment would otherwise reach the fused AdamW kernel, which does not check shapes and writes
out of bounds (a segfault); a NaN weight or a negative second moment would train on silently in NaN.
Every failure is a CheckpointError naming the file and the first value that is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from reference_llm.errors import CheckpointError

# state.json holds a run config, RNG states and counters: about 30 KB. The limits leave ample room and
# keep a hostile file from exhausting memory or the parser's stack.
MAX_STATE_BYTES = 16 << 20
MAX_METADATA_BYTES = 1 << 20  # optimizer.safetensors' param_groups (JSON in the header)
MAX_JSON_DEPTH = 16  # state.json nests 4 levels deep
MAX_STEP = 10**12
MAX_ELAPSED_S = 1e9  # about 31 years
_LOADER_MAX_STEP = 2**62
STEP_DIR = re.compile(r"step_(\d{7,13})")  # step_dir_name's names; `latest` may hold nothing else

WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# AdamW's per-parameter state: step count and first and second moments (max_exp_avg_sq with amsgrad).
_REQUIRED_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq"})
_OPTIMIZER_KEYS = _REQUIRED_KEYS | {"max_exp_avg_sq"}
_SECOND_MOMENTS = frozenset({"exp_avg_sq", "max_exp_avg_sq"})
# param_groups entries with a range; others must be a flag, None or a finite number.
_GROUP_RANGES: dict[str, tuple[float, float]] = {"lr": (0.0, 1e3), "eps": (0.0, 1.0), "weight_decay": (0.0, 1e3)}


# ----------------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------------


def read_json(path: Path, max_bytes: int = MAX_STATE_BYTES) -> Any:
    """Parse a JSON file of at most `max_bytes`, nested at most MAX_JSON_DEPTH deep."""
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise CheckpointError(f"{path} is not readable ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise CheckpointError(f"{path} is larger than {max_bytes >> 20} MiB, which no checkpoint writes")
    return parse_json(data, str(path))


def parse_json(text: str | bytes, source: str) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{source} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of over 4,300 digits
        raise CheckpointError(f"{source} is not readable JSON ({exc})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{source} is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (so no limit of Python's own is reached)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:  # deeper than that is refused anyway: no need to walk further
                stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


# ----------------------------------------------------------------------------------------------------
# state.json
# ----------------------------------------------------------------------------------------------------


def check_state(state: Any, source: Path, format_version: int) -> None:
    """The counters, loader position and RNG states of a state.json: types and ranges. The run config
    is checked by building it (checkpoint.run_config_from_dict)."""
    if not isinstance(state, dict) or not {"step", "config"} <= set(state):
        raise CheckpointError(f"{source} lacks the keys 'step' and 'config'")
    if state.get("format_version") != format_version:
        raise CheckpointError(
            f"{source}: checkpoint format {state.get('format_version')!r:.40} is not supported "
            f"(this version reads {format_version})"
        )
    _integer(state["step"], 0, MAX_STEP, f"{source}: step")
    match = STEP_DIR.fullmatch(source.parent.name)
    if match and int(match.group(1)) != state["step"]:
        raise CheckpointError(f"{source}: step {state['step']} does not match its directory {source.parent.name}")
    if "elapsed_s" in state:
        _real(state["elapsed_s"], 0.0, MAX_ELAPSED_S, f"{source}: elapsed_s")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{source}: config must be a JSON object")
    fingerprint = state.get("tokenizer_fingerprint")
    if fingerprint is not None and (not isinstance(fingerprint, str) or len(fingerprint) > 256):
        raise CheckpointError(f"{source}: tokenizer_fingerprint must be a short string")
    if "loader" in state:
        loader = state["loader"]
        if not isinstance(loader, dict) or "step" not in loader:
            raise CheckpointError(f"{source}: loader must be a JSON object with a step")
        _integer(loader["step"], 0, _LOADER_MAX_STEP, f"{source}: loader.step")
    if "rows" in state:  # post-training's row sampler: a torch generator state
        rows = state["rows"]
        if not isinstance(rows, dict):
            raise CheckpointError(f"{source}: rows must be a JSON object")
        _byte_list(rows.get("generator"), _torch_state_size(), f"{source}: rows.generator")
    if "rng" in state:
        check_rng_state(state["rng"], f"{source}: rng")


def check_rng_state(rng: Any, source: str) -> None:
    """The layout `checkpoint.capture_rng_state` writes: Python's and NumPy's Mersenne Twister states
    (624 32-bit words and a position) and torch's generator states (base64 bytes of a fixed size)."""
    if not isinstance(rng, dict) or not {"python", "numpy", "torch"} <= set(rng):
        raise CheckpointError(f"{source} must hold python, numpy and torch states")
    python = rng["python"]
    if not (
        isinstance(python, list)
        and len(python) == 3
        and python[0] == 3
        and isinstance(python[1], list)
        and len(python[1]) == 625
    ):
        raise CheckpointError(f"{source}.python is not a Mersenne Twister state (version 3, 625 numbers)")
    _words(python[1][:624], f"{source}.python")
    _integer(python[1][624], 0, 624, f"{source}.python position")
    if python[2] is not None:
        _real(python[2], -math.inf, math.inf, f"{source}.python gauss")
    numpy = rng["numpy"]
    if not (
        isinstance(numpy, list)
        and len(numpy) == 5
        and numpy[0] == "MT19937"
        and isinstance(numpy[1], list)
        and len(numpy[1]) == 624
    ):
        raise CheckpointError(f"{source}.numpy is not a Mersenne Twister state (MT19937, 624 numbers)")
    _words(numpy[1], f"{source}.numpy")
    _integer(numpy[2], 0, 624, f"{source}.numpy position")
    _integer(numpy[3], 0, 1, f"{source}.numpy has_gauss")
    _real(numpy[4], -math.inf, math.inf, f"{source}.numpy cached gaussian")
    _base64_state(rng["torch"], _torch_state_size(), f"{source}.torch")
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, list) or len(cuda) > 1024 or not all(isinstance(s, str) for s in cuda):
        raise CheckpointError(f"{source}.cuda must be a list of base64 strings")


def _torch_state_size() -> int:
    return torch.get_rng_state().numel()


def _integer(value: Any, low: int, high: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CheckpointError(f"{what} must be an integer from {low:,} to {high:,}, got {value!r:.40}")


def _real(value: Any, low: float, high: float, what: str) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise CheckpointError(f"{what} must be a finite number from {low:g} to {high:g}, got {value!r:.40}")


def _words(values: list[Any], what: str) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in values):
        raise CheckpointError(f"{what} holds a value that is not a 32-bit unsigned integer")


def _byte_list(values: Any, size: int, what: str) -> None:
    if (
        not isinstance(values, list)
        or len(values) != size
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 256 for v in values)
    ):
        raise CheckpointError(f"{what} must be a list of {size} bytes (0-255)")


def _base64_state(value: Any, size: int, what: str) -> None:
    try:
        ok = isinstance(value, str) and len(base64.b64decode(value, validate=True)) == size
    except binascii.Error:
        ok = False
    if not ok:
        raise CheckpointError(f"{what} must be base64 of a {size}-byte generator state")


# ----------------------------------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------------------------------


def check_weights(weights: Mapping[str, torch.Tensor], source: Path) -> None:
    """Floating-point dtypes and finite values only: integer or complex tensors cannot be weights, and
    a NaN or infinity would turn every later step to NaN."""
    for name, tensor in weights.items():
        if tensor.dtype not in WEIGHT_DTYPES:
            raise CheckpointError(
                f"{source}: tensor {name!r} has dtype {_dtype(tensor)}; weights are "
                f"{', '.join(map(_dtype_name, WEIGHT_DTYPES))}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{source}: tensor {name!r} holds NaN or infinite values")


def check_param_groups(groups: Any, source: str) -> None:
    """Optimizer groups as `optimizer_state_by_name` writes them: parameter names and hyper-parameters."""
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{source}: param_groups must be a list of JSON objects")
    seen: set[str] = set()
    for group in groups:
        params = group.get("params")
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            raise CheckpointError(f"{source}: each param group needs 'params', a list of parameter names")
        repeated = seen.intersection(params)
        if repeated or len(set(params)) != len(params):
            raise CheckpointError(
                f"{source}: parameter {sorted(repeated or params)[0]!r} is in more than one place in param_groups"
            )
        seen.update(params)
        for key, value in group.items():
            if key == "params":
                continue
            if key in _GROUP_RANGES:
                _real(value, *_GROUP_RANGES[key], f"{source}: param group {key}")
            elif key == "betas":
                if not isinstance(value, list) or len(value) != 2:
                    raise CheckpointError(f"{source}: param group betas must be two numbers")
                for beta in value:
                    _real(beta, 0.0, 0.999999, f"{source}: param group betas")
            elif not (value is None or isinstance(value, bool)):
                _real(value, -math.inf, math.inf, f"{source}: param group {key}")


def check_optimizer_state(
    optimizer_state: Mapping[str, Any], shapes: Mapping[str, torch.Size], source: str, complete: bool = True
) -> None:
    """AdamW state by parameter name against the parameters' `shapes`: a scalar step count and
    moments of the parameter's shape, all floating point and finite, second moments not negative.
    `complete=False` (a checkpoint read without its model) checks only the names found in `shapes`."""
    named = {p for g in optimizer_state["param_groups"] for p in g["params"]}
    for name, per_param in optimizer_state["state"].items():
        where = f"{source}: {name!r}"
        if name not in named:
            raise CheckpointError(f"{where} has optimizer state but is in no param group")
        if complete and name not in shapes:
            raise CheckpointError(
                f"{where} has optimizer state but is not a parameter of the model (is it for a different model config?)"
            )
        keys = set(per_param)
        if not _REQUIRED_KEYS <= keys <= _OPTIMIZER_KEYS:
            raise CheckpointError(
                f"{where} has optimizer state {', '.join(sorted(keys))}; AdamW keeps "
                f"{', '.join(sorted(_REQUIRED_KEYS))} (and max_exp_avg_sq with amsgrad)"
            )
        for key, tensor in per_param.items():
            if not tensor.is_floating_point():
                raise CheckpointError(f"{where} {key} has dtype {_dtype(tensor)}; optimizer state is floating point")
            if not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"{where} {key} holds NaN or infinite values")
            if key == "step":
                if tensor.dim() != 0 or not 0 <= float(tensor) <= MAX_STEP:
                    raise CheckpointError(f"{where} step must be a scalar from 0 to {MAX_STEP:,}")
                continue
            expected = shapes.get(name, per_param["exp_avg"].shape)
            if tensor.shape != expected:
                raise CheckpointError(
                    f"{where} {key} has shape {tuple(tensor.shape)} but the parameter has {tuple(expected)}"
                )
            if key in _SECOND_MOMENTS and bool((tensor < 0).any()):
                raise CheckpointError(f"{where} {key} holds negative values (a second moment cannot)")


def _dtype(tensor: torch.Tensor) -> str:
    return _dtype_name(tensor.dtype)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
