"""Strings people type -> numbers and hardware: "7B", "2T", "8xH100", "$50k", "8xH100 for 3 days".

Every parser raises `EstimateError` with a one-line message naming the flag and the accepted forms.
"""

from __future__ import annotations

import difflib
import math
import re

from generator.errors import EstimateError
from generator.estimate.budget import LAPTOP_HOURS, Budget
from generator.estimate.hardware import ALIASES, KNOWN_GPUS, Hardware, cpu_spec, lookup_gpu

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_NUMBER = r"(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)\s*(?P<suffix>[kKmMbBgGtT]?)"
_HOURS_PER = {
    "m": 1 / 60,
    "min": 1 / 60,
    "mins": 1 / 60,
    "minute": 1 / 60,
    "minutes": 1 / 60,
    "h": 1.0,
    "hr": 1.0,
    "hrs": 1.0,
    "hour": 1.0,
    "hours": 1.0,
    "d": 24.0,
    "day": 24.0,
    "days": 24.0,
    "w": 168.0,
    "week": 168.0,
    "weeks": 168.0,
}

# Devices per node when "NxGPU" names more devices than one machine holds.
GPUS_PER_NODE = 8


def parse_count(text: str | float | int, flag: str = "--params") -> float:
    """'7B' -> 7e9, '124M' -> 1.24e8, '2T' -> 2e12, '500k', '1.5e9', '7_000_000'; must be > 0."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        cleaned = str(text).strip().replace("_", "").replace(",", "")
        match = re.fullmatch(_NUMBER, cleaned)
        if not match:
            raise EstimateError(f"{flag} {text!r} is not a number; use e.g. 7B, 124M, 2T, 500k or 1.5e9")
        value = float(match["num"]) * _SUFFIX[match["suffix"].upper()]
    if not math.isfinite(value) or value <= 0:
        raise EstimateError(f"{flag} must be positive, got {text!r}")
    return value


def parse_hours(text: str, flag: str = "--budget") -> float:
    """'3 days' -> 72, '12 hours' -> 12, '90 min' -> 1.5, '2w' -> 336."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]+)", text.strip())
    unit = match[2].lower() if match else ""
    if not match or unit not in _HOURS_PER:
        raise EstimateError(f"{flag}: duration {text!r} not understood; use e.g. '3 days', '12 hours', '90 minutes'")
    hours = float(match[1]) * _HOURS_PER[unit]
    if hours <= 0:
        raise EstimateError(f"{flag}: duration must be positive, got {text!r}")
    return hours


def parse_hardware(text: str, cpu_tflops: float | None = None, flag: str = "--hardware") -> Hardware:
    """'cpu' | 'H100' | '8xH100' | '4x8xA100-80GB' (nodes x GPUs per node x GPU) -> Hardware.

    'NxGPU' with N above 8 means N/8 nodes of 8 (N must then be a multiple of 8).
    """
    spec = text.strip()
    if spec.lower() in ("cpu", "laptop", "1xcpu"):
        return Hardware(1, 1, cpu_spec(cpu_tflops))
    # Leading counts only: GPU names contain x's of their own (RTX4090, MI300X).
    match = re.fullmatch(r"(?:(\d+)\s*[xX×*]\s*)?(?:(\d+)\s*[xX×*]\s*)?([A-Za-z][\w.-]*)", spec)
    if not match:
        raise EstimateError(
            f"{flag} {text!r} not understood; use cpu, H100, 8xH100 or 4x8xH100 (nodes x GPUs per node x GPU)"
        )
    name = match[3]
    numbers = [int(c) for c in match.groups()[:2] if c is not None]
    if any(n <= 0 for n in numbers):
        raise EstimateError(f"{flag} {text!r}: GPU and node counts must be positive")
    gpu = lookup_gpu(name)
    if gpu is None:
        raise EstimateError(_unknown_gpu_message(name, flag))
    if len(numbers) == 2:
        nodes, per_node = numbers
    elif not numbers:
        nodes, per_node = 1, 1
    elif numbers[0] <= GPUS_PER_NODE:
        nodes, per_node = 1, numbers[0]
    elif numbers[0] % GPUS_PER_NODE == 0:
        nodes, per_node = numbers[0] // GPUS_PER_NODE, GPUS_PER_NODE
    else:
        raise EstimateError(
            f"{flag} {text!r}: {numbers[0]} GPUs is more than one node of {GPUS_PER_NODE} "
            f"and not a multiple of {GPUS_PER_NODE}; write NODESxGPUSx{gpu.name}"
        )
    return Hardware(nodes, per_node, gpu)


def _unknown_gpu_message(name: str, flag: str) -> str:
    names = list(KNOWN_GPUS) + list(ALIASES)
    close = difflib.get_close_matches(name.upper(), [n.upper() for n in names], n=1, cutoff=0.4)
    hint = ""
    if close:
        original = next(n for n in names if n.upper() == close[0])
        hint = f" (did you mean {ALIASES.get(original, original)}?)"
    return f"{flag}: unknown GPU {name!r}{hint}; known: cpu, {', '.join(KNOWN_GPUS)}"


def parse_budget(text: str, cpu_tflops: float | None = None, flag: str = "--budget") -> Budget:
    """'$500', '$50k', '200 gpu-hours', '100k gpu-hours', '8xH100 for 3 days', '1xRTX4090 for 12 hours',
    'laptop' (= this CPU for 10 minutes) -> Budget."""
    spec = text.strip()
    accepted = "use e.g. '$50k', '100k gpu-hours', '8xH100 for 14 days' or 'laptop'"
    if not spec:
        raise EstimateError(f"{flag} is empty; {accepted}")
    if spec.lower() == "laptop":
        return Budget(
            "time",
            LAPTOP_HOURS,
            hardware=parse_hardware("cpu", cpu_tflops, flag),
            text=spec,
            note=f"'laptop' means this CPU for {LAPTOP_HOURS * 60:.0f} minutes",
        )
    dollars = re.fullmatch(r"\$\s*(.+)|(.+?)\s*(?:\$|usd|dollars?)", spec, flags=re.IGNORECASE)
    if dollars:
        return Budget("usd", parse_count(dollars[1] or dollars[2], flag), text=spec)
    gpu_hours = re.fullmatch(r"(.+?)\s*gpu[\s-]*(?:hours?|hrs?|h)", spec, flags=re.IGNORECASE)
    if gpu_hours:
        return Budget("gpu_hours", parse_count(gpu_hours[1], flag), text=spec)
    timed = re.fullmatch(r"(.+?)\s+for\s+(.+)", spec, flags=re.IGNORECASE)
    if timed:
        hardware = parse_hardware(timed[1], cpu_tflops, flag)
        return Budget("time", parse_hours(timed[2], flag), hardware=hardware, text=spec)
    raise EstimateError(f"{flag} {text!r} not understood; {accepted}")


def parse_tokens(text: str | float | int, flag: str = "--tokens") -> float | str:
    """'2T' -> 2e12; 'chinchilla' is returned as is (the caller knows the parameter count)."""
    if isinstance(text, str) and text.strip().lower() == "chinchilla":
        return "chinchilla"
    return parse_count(text, flag)
