"""benchmarks/gpu_check.sh: the GPU check runs every part on the CPU in --dry-run, and refuses without CUDA.

The dry run trains through the real entry point (one plain process, then FSDP2 and DeepSpeed ZeRO-2
under torchrun with one process on gloo), generates with the KV cache and measures a step's memory,
all at tiny scale. What is checked is that each part produced its figure, that the figures are what
the report says they are computed from (MFU from tokens/s, the model's FLOPs and the catalogue's H100
peak), and that the three engines trained the same run (one process each: the same losses). Speed is
not asserted. --no-compile keeps it within the test budget; the GPU run compiles (see the module).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from generator.estimate.hardware import KNOWN_GPUS

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
PARTS = ("train-single", "train-fsdp", "train-zero2", "generate", "activation-memory")


def run_script(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        # DeepSpeed's JIT-built ops: the cache the Makefile and tests/distributed/ use
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")),
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_dry_run_produces_every_figure(tmp_path):
    result = run_script(tmp_path, "--dry-run", "--no-compile", "--out", "dry_run.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # One figure line per part, in order, then the summary table naming each part again.
    figures = [line for line in lines if line.split(":")[0] in PARTS]
    assert [line.split(":")[0] for line in figures] == list(PARTS), result.stdout
    for line in figures[:3]:
        assert re.search(r": [\d,]+ tokens/s, MFU \d+\.\d% of H100-SXM bf16 peak \(989 TFLOP/s\)", line), line
    assert re.search(r"generate: [\d,.]+ tokens/s with the KV cache", figures[3]), figures[3]
    assert re.search(r"allocates [\d,.]+ MiB, estimated [\d,.]+ MiB \([+-]\d+\.\d%\)", figures[4]), figures[4]
    summary = lines[lines.index(next(line for line in lines if line.startswith("summary"))) + 1 :]
    assert [row.split()[0] for row in summary[: len(PARTS)]] == list(PARTS)
    assert summary[len(PARTS)] == "report: dry_run.json"

    report: dict[str, Any] = json.loads((tmp_path / "dry_run.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu" and set(report["parts"]) == set(PARTS)
    assert report["peak"] == {"gpu": "H100-SXM", "bf16_tflops": KNOWN_GPUS["H100-SXM"].bf16_tflops}
    parts = report["parts"]
    assert not [part for part, r in parts.items() if "failed" in r]
    flops = report["model"]["flops_per_token"]
    losses = []
    for strategy in ("single", "fsdp", "zero2"):
        run = parts[f"train-{strategy}"]
        assert run["steps"] == 6 and run["tokens_per_s"] > 0
        assert run["mfu"] == pytest.approx(run["tokens_per_s"] * flops / 989e12)
        losses.append(run["final_loss"])
    # One process each, fp32, the same seed and data: every engine trains the same run.
    assert all(math.isclose(loss, losses[0], rel_tol=1e-4) for loss in losses), losses
    assert parts["generate"]["new_tokens"] == 16 and parts["generate"]["tokens_per_s"] > 0
    memory = parts["activation-memory"]
    assert memory["measured_mib"] > 0
    # The estimator's tolerance (tests/generator/test_estimate_activations.py)
    assert memory["estimated_mib"] == pytest.approx(memory["measured_mib"], rel=0.15)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA this command runs the whole GPU check")
def test_the_gpu_command_without_cuda_is_one_line_and_exit_2(tmp_path):
    """The command docs/distributed.md shows, as written, on a machine without a GPU."""
    result = run_script(tmp_path, "--out", "gpu_check.json", timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: no CUDA device: this check needs a GPU (use --dry-run for a CPU smoke run at tiny scale)"
    ]
    assert not (tmp_path / "gpu_check.json").exists()


def test_an_existing_report_is_not_overwritten(tmp_path):
    (tmp_path / "gpu_check.json").write_text("{}")
    result = run_script(tmp_path, "--dry-run", "--out", "gpu_check.json", timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: gpu_check.json exists; pass --force to overwrite it, or another --out"
    ]
    assert (tmp_path / "gpu_check.json").read_text() == "{}"


@pytest.mark.slow  # about 10 s of CPU, 25 s of wall time on a busy 2-core machine
def test_a_failed_part_is_reported_and_the_others_still_run(tmp_path):
    """A GPU run is not cheap to repeat: a part that fails (here every training run, stopped by
    --part-timeout) costs its own figure only, and the exit code says that one failed."""
    result = run_script(tmp_path, "--dry-run", "--part-timeout", "0.1", "--out", "report.json")
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for part in PARTS[:3]:
        assert f"{part}: FAILED: RuntimeError: did not finish within 0 s (--part-timeout)" in lines, result.stdout
    assert any(line.startswith("generate: ") and "tokens/s" in line for line in lines)
    parts = json.loads((tmp_path / "report.json").read_text())["parts"]
    assert [part for part, r in parts.items() if "failed" in r] == list(PARTS[:3])
    assert parts["activation-memory"]["measured_mib"] > 0
