"""Helpers for the multi-process tests: launch `drive_engine.py` (or the real training entry point) with
torchrun, 2 processes on the gloo backend, exactly as a user's launch script does.

Each launch uses `torchrun --standalone`, whose rendezvous binds a free port, so tests (and other
people's test runs on the same machine) never collide on a MASTER_PORT. DeepSpeed's first start
JIT-compiles a small C++ op (~1 minute); TORCH_EXTENSIONS_DIR points at the same cache the Makefile uses,
so later runs reuse it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("drive_engine.py")
LAUNCH_TIMEOUT_S = 900  # a cold DeepSpeed JIT build on a loaded 2-core machine has taken ~4 minutes


def launch_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # a launcher sets these; stale ones from the caller would mislead it
    return env


def launch(
    args: list[str], nproc: int, cwd: Path, timeout: float = LAUNCH_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc_per_node nproc ARGS` (nproc 0: plain `python ARGS`).

    On timeout torchrun gets SIGTERM, on which it stops its workers (they run in sessions of their own,
    so killing torchrun's process group would not reach them, and they would hold our pipes open)."""
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    else:
        cmd = [sys.executable, *args]
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=launch_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.communicate(timeout=60)
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.fixture
def dist_env() -> dict[str, str]:
    """Environment for a subprocess of this checkout, without any launcher variables."""
    return launch_env()


@pytest.fixture(scope="session")
def torchrun():
    """torchrun(args, nproc, cwd, timeout=...) -> the finished process, whatever its exit code."""
    return launch


@pytest.fixture(scope="session")
def launch_ok():
    """launch_ok(args, nproc, cwd, what) -> the finished process, asserted to have exited 0."""

    def run(args: list[str], nproc: int, cwd: Path, what: str) -> subprocess.CompletedProcess[str]:
        result = launch(args, nproc, cwd)
        assert_ok(result, what)
        return result

    return run


@dataclass
class DriverRun:
    report: dict[str, Any]
    checkpoint: Path | None  # run directory with the checkpoint written after --save-at


def assert_ok(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, (
        f"{what} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )


@pytest.fixture(scope="session")
def drive(tmp_path_factory: pytest.TempPathFactory, launch_ok):
    """drive(name, strategy, *extra_args, save_at=0, offload="none", nproc=2) -> DriverRun; strategy
    "single" runs one plain process, every other strategy `nproc` processes under torchrun. Every run
    trains on the same 8 sequences per step: 2 x 2 micro-batches x 2 processes, or micro-batches of 4
    in one process."""
    from reference_llm.config import config_from_dict
    from reference_llm.distributed.ds_config import STAGES, build

    root = tmp_path_factory.mktemp("drive")

    def run_driver(
        name: str, strategy: str, *extra: str, save_at: int = 0, offload: str = "none", nproc: int = 2
    ) -> DriverRun:
        out = root / f"{name}.json"
        args = [str(DRIVER), "--strategy", strategy, "--offload", offload, "--out", str(out), *extra]
        checkpoint = None
        if save_at:
            checkpoint = root / f"{name}-ckpt"
            args += ["--save", str(checkpoint), "--save-at", str(save_at)]
        nproc = 1 if strategy == "single" else nproc
        micro = 8 // (2 * nproc)
        if strategy in STAGES:
            # The DeepSpeed config the generated project would have for this run.
            cfg = config_from_dict(
                {
                    "train": {"micro_batch": micro, "grad_accum": 2, "grad_clip": 0.5},
                    "distributed": {"strategy": strategy, "offload": offload},
                }
            )
            ds = root / f"{name}-deepspeed.json"
            ds.write_text(json.dumps(build(cfg, world_size=nproc, bf16=False)))
            args += ["--ds-config", str(ds)]
        if micro != 2 and "--micro-batch" not in extra:
            args += ["--micro-batch", str(micro)]
        launch_ok(args, 0 if strategy == "single" else nproc, root, f"{strategy} driver ({name})")
        return DriverRun(json.loads(out.read_text()), checkpoint)

    return run_driver


@pytest.fixture(scope="session")
def reference(drive):
    """One process, 4 steps; it also checkpoints after step 2."""
    return drive("reference", "single", save_at=2)


@pytest.fixture(scope="session")
def strategy_run(drive):
    """Each strategy's 2-process run, once per session (the resume tests reuse its checkpoint)."""
    runs = {}

    def get(strategy: str):
        if strategy not in runs:
            runs[strategy] = drive(strategy, strategy, save_at=2)
        return runs[strategy]

    return get
