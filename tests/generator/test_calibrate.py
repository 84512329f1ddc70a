"""`llmgen calibrate RUN_DIR`: a run of the real trainer at tiny scale (made once for the module) measured
against the estimator's own `estimate_run` for the same plan, synthetic metrics for what a short real run
cannot show (a run in progress, slow warm-up steps, logged memory), and one-line errors for bad input.
The README's and docs/estimator.md's calibrate commands run here as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.commands.calibrate import WARMUP_STEPS
from generator.estimate import KNOWN_GPUS, Hardware, RunSpec, estimate_run, parse_hardware
from reference_llm.assets import corpus_path
from reference_llm.model.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
MICRO_BATCH, STEPS, SEQ = 2, 12, 64  # the tiny preset's context is 64 tokens; 10 warm-up steps
TRAIN_TOML = f"""
[model]
preset = "tiny"
[data]
corpus = "corpus.txt"
tokenizer = "char"
cache_dir = "cache"
[train]
max_steps = {STEPS}
micro_batch = {MICRO_BATCH}
log_interval = 2
warmup_steps = 2
[eval]
interval = 0
iters = 1
[checkpoint]
dir = "runs/demo"
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose runs/demo is a finished run of `python -m reference_llm.train` (tiny preset)."""
    root = tmp_path_factory.mktemp("calibrate")
    (root / "corpus.txt").write_text(corpus_path().read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    (root / "train.toml").write_text(TRAIN_TOML, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "reference_llm.train", "--config", "train.toml"],
        cwd=root,
        # One thread: a model this small gains nothing from more, and on a busy machine OpenMP's
        # spinning threads made its steps 20x slower (measured at a load average of 9 on 2 cores).
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture(autouse=True)
def run_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU peak is the one the run measured, unless a test gives one (a shell's setting would win)."""
    monkeypatch.delenv("LLMGEN_CPU_TFLOPS", raising=False)


def calibrate(*args: str) -> Any:
    return CliRunner().invoke(app, ["calibrate", *args])


def report(*args: str) -> dict[str, Any]:
    result = calibrate(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if "tokens_per_s" in r]


def write_metrics(run: Path, rows: list[dict[str, Any]]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# ---- A real run ------------------------------------------------------------------------------------------


def test_a_real_run_is_measured_after_its_warmup_against_estimate_run(workdir: Path) -> None:
    run = workdir / "runs" / "demo"
    r = report(str(run))
    rows = records(run)
    first = next(row for row in rows if row["step"] >= WARMUP_STEPS)
    last = rows[-1]
    assert (r["steps"]["measured_from"], r["steps"]["measured_to"], r["steps"]["warmup_skipped"]) == (
        first["step"],
        STEPS,
        WARMUP_STEPS,
    )
    # tokens/s: tokens per step over the run's own training seconds per step, after the warm-up.
    tokens_per_step = MICRO_BATCH * SEQ
    assert r["tokens_per_step"] == tokens_per_step == last["tokens"] // last["step"]
    seconds_per_step = (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])
    tokens_per_s = tokens_per_step / seconds_per_step
    assert r["measured"]["tokens_per_s"] == pytest.approx(tokens_per_s, rel=1e-12)

    # The estimate side is estimate_run's, for the plan the checkpoint stores, on this CPU at the matmul
    # peak the run measured (its logged MFU's denominator).
    state = json.loads((run / (run / "latest").read_text().strip() / "state.json").read_text())
    model = ModelConfig.from_dict(state["config"]["model"])
    flops_per_token = model.flops_per_token(SEQ)
    peak = last["tokens_per_s"] * flops_per_token / last["mfu"] / 1e12
    assert r["measured"]["matmul_peak_tflops"] == pytest.approx(peak, rel=1e-12)
    cpu = parse_hardware("cpu", peak)
    spec = RunSpec(
        model,
        cpu,
        float(STEPS * tokens_per_step),
        parallelism="single",
        micro_batch=MICRO_BATCH,
        seq_len=SEQ,
        precision=cpu.compute_precision("auto"),
    )
    est = estimate_run(spec)
    assert r["estimated"]["estimate"] == json.loads(json.dumps(est.to_dict()))
    assert r["estimated"]["tokens_per_s"] == pytest.approx(est.tokens / (est.wall_hours * 3600))
    assert (r["estimated"]["mfu"], r["estimated"]["memory_per_gpu_gib"]) == (est.mfu, est.memory_per_gpu_gib)
    # MFU: the measured model FLOP/s over the same peak; the run's own figure agrees on its own peak.
    mfu = tokens_per_s * flops_per_token / (peak * 1e12)
    assert r["measured"]["mfu"] == pytest.approx(mfu) == pytest.approx(r["measured"]["mfu_of_measured_peak"])
    assert r["measured"]["wall_hours"] == pytest.approx(STEPS * seconds_per_step / 3600)
    # Memory: the largest the run logged (MiB, a peak so far), in GiB; none where the loop logs none.
    logged = [row["memory_mib"] / 1024 for row in rows if row.get("memory_mib")]
    assert r["measured"]["peak_memory_gib"] == (max(logged) if logged else None)
    assert r["finish"]["remaining_steps"] == 0 and r["finish"]["hours"] == 0

    # Elsewhere: the whole run on one of each GPU at the measured MFU, as estimate_run says.
    assert [row["hardware"] for row in r["other_hardware"]] == [f"1x{name}" for name in KNOWN_GPUS]
    h100 = next(row for row in r["other_hardware"] if row["hardware"] == "1xH100-SXM")
    there = estimate_run(spec.but(hardware=Hardware(1, 1, KNOWN_GPUS["H100-SXM"]), precision="bfloat16", mfu=mfu))
    assert h100["wall_hours"] == pytest.approx(there.wall_hours) and h100["fits"] is there.fits
    assert h100["tokens_per_s"] == pytest.approx(mfu * 989e12 / flops_per_token)
    assert h100["cost_usd"] == pytest.approx(there.gpu_hours * 2.99)
    assert any("carried over" in note for note in r["assumptions"])


def test_the_table_shows_the_json_figures(workdir: Path) -> None:
    run = str(workdir / "runs" / "demo")
    r = report(run)
    result = CliRunner(env={"COLUMNS": "160"}).invoke(app, ["calibrate", run])
    assert result.exit_code == 0 and result.stderr == ""
    text = result.stdout
    assert f"tiny on cpu ({r['precision']}), step {STEPS} of {STEPS}" in text
    assert f"{r['measured']['tokens_per_s']:,.0f}" in text and f"{r['measured']['mfu']:.4f}" in text
    assert "finished: every planned step is logged" in text
    memory = r["measured"]["peak_memory_gib"]
    assert ("not logged" if memory is None else f"{memory * 1024:.1f} MiB") in text  # a tiny run: < 1 GiB
    assert "1xH100-SXM" in text and "warm-up: the first 10 steps are not measured" in text


def test_a_run_on_one_device_is_not_calibrated_as_eight(workdir: Path) -> None:
    """The metrics' token count says how many devices trained; --hardware must agree on a GPU."""
    result = calibrate(str(workdir / "runs" / "demo"), "--hardware", "8xH100")
    assert result.exit_code == 2
    assert result.stderr == "error: the run trained on 1 device(s) (128 tokens per step), --hardware 8xH100 has 8\n"


# ---- Synthetic metrics: what a short real run cannot show -------------------------------------------------


def synthetic(run: Path, *, steps: int, slow_until: int, memory: bool = False) -> list[dict[str, Any]]:
    """Records every 2 steps: 3 s per step up to `slow_until`, then 0.5 s; 1,000 tokens/s logged."""
    rows, elapsed = [], 0.0
    for step in range(2, steps + 1, 2):
        elapsed += 2 * (3.0 if step <= slow_until else 0.5)
        row: dict[str, Any] = {"step": step, "loss": 3.0, "tokens_per_s": 1000.0, "mfu": 0.3, "elapsed_s": elapsed}
        if memory:
            row["memory_mib"] = 1024.0 + 10 * step
        rows.append(row)
    rows.insert(3, {"step": 6, "val_loss": 3.1})  # an evaluation record: no tokens/s, not measured
    write_metrics(run, rows)
    return rows


def test_a_run_in_progress_gets_its_time_and_cost_to_finish(tmp_path: Path) -> None:
    """No checkpoint yet: the config comes from --config; 40 of 100 steps logged on one H100."""
    config = tmp_path / "train.toml"
    config.write_text('[model]\npreset = "tiny"\n[train]\nmax_steps = 100\nmicro_batch = 8\n', encoding="utf-8")
    run = tmp_path / "run"
    synthetic(run, steps=40, slow_until=4, memory=True)
    r = report(str(run), "--config", str(config), "--hardware", "H100", "--price", "2.0")
    assert (r["steps"]["measured_from"], r["steps"]["measured_to"]) == (10, 40)
    assert r["measured"]["seconds_per_step"] == pytest.approx(0.5)
    assert r["tokens_per_step"] == 8 * 64 and r["measured"]["tokens_per_s"] == pytest.approx(8 * 64 / 0.5)
    assert r["finish"]["remaining_steps"] == 60 and r["finish"]["remaining_tokens"] == 60 * 8 * 64
    assert r["finish"]["hours"] == pytest.approx(60 * 0.5 / 3600)
    assert r["finish"]["cost_usd"] == pytest.approx(60 * 0.5 / 3600 * 2.0)
    assert r["measured"]["peak_memory_gib"] == pytest.approx(1.0 + 400 / 1024)  # the largest logged, in GiB
    assert r["estimated"]["memory_per_gpu_gib"] == pytest.approx(r["estimated"]["estimate"]["memory_per_gpu_gib"])
    assert r["estimated"]["peak_tflops"] == 989.0 and r["hardware"] == "1xH100-SXM"
    assert r["config"] == str(config)


def test_train_max_minutes_ends_the_run_early(tmp_path: Path) -> None:
    """36 s of training allowed, 30 s used by step 40, 0.5 s a step: it stops at about step 52, not 100."""
    config = tmp_path / "train.toml"
    config.write_text('[model]\npreset = "tiny"\n[train]\nmax_steps = 100\nmax_minutes = 0.6\n', encoding="utf-8")
    synthetic(tmp_path / "run", steps=40, slow_until=4)
    r = report(str(tmp_path / "run"), "--config", str(config), "--cpu-tflops", "1")
    assert r["finish"]["remaining_steps"] == 12 and r["finish"]["hours"] == pytest.approx(6 / 3600)
    assert "train.max_minutes = 0.6 ends the run at about step 52" in r["assumptions"]


def test_warmup_steps_are_skipped_and_the_flag_changes_how_many(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tmp_path / "train.toml"
    config.write_text('[model]\npreset = "tiny"\n[train]\nmax_steps = 30\nmicro_batch = 1\n', encoding="utf-8")
    synthetic(run, steps=30, slow_until=10)
    steady = report(str(run), "--config", str(config), "--cpu-tflops", "1")
    assert steady["measured"]["seconds_per_step"] == pytest.approx(0.5)  # steps 11-30 only
    everything = report(str(run), "--config", str(config), "--cpu-tflops", "1", "--warmup-steps", "0")
    assert everything["steps"]["measured_from"] == 2  # from the first log line: its own time is not known
    assert everything["measured"]["seconds_per_step"] == pytest.approx((4 * 6 + 20 * 0.5) / 28)


# ---- Bad input -------------------------------------------------------------------------------------------


def _copy_run(workdir: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(workdir / "runs" / "demo", run)
    return run


@pytest.mark.parametrize(
    ("breakage", "words"),
    [
        ("missing dir", "run directory not found"),
        ("no metrics", "no metrics file"),
        ("corrupt line", "line 2 is not a JSON object"),
        ("bad value", "step 4 has tokens_per_s 'fast'; expected a positive number"),
        ("out of order", "step 2 does not follow step 4"),
        ("too few steps", "too few steps to measure: training logged up to step 10"),
        ("only evaluations", "holds no training steps yet"),
        ("no checkpoint", "has no checkpoint yet (no latest file): pass --config FILE"),
        ("hostile latest", "must name a step directory like step_0000500"),
        ("broken state", "state.json is not readable JSON"),
        ("metrics elsewhere", "train.metrics_file '../../x/metrics.jsonl' must be a path inside the run directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(workdir: Path, tmp_path: Path, breakage: str, words: str) -> None:
    run = _copy_run(workdir, tmp_path)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    state = run / (run / "latest").read_text().strip() / "state.json"
    if breakage == "missing dir":
        shutil.rmtree(run)
    elif breakage == "no metrics":
        metrics.unlink()
    elif breakage == "corrupt line":
        metrics.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    elif breakage == "bad value":
        metrics.write_text("\n".join([lines[0], lines[1].replace('"tokens_per_s": ', '"tokens_per_s": "fast", "x": ')]))
    elif breakage == "out of order":
        metrics.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    elif breakage == "too few steps":
        metrics.write_text("\n".join(lines[:5]) + "\n")  # steps 2-10: nothing after the warm-up
    elif breakage == "only evaluations":
        metrics.write_text(lines[-1] + "\n")
    elif breakage == "no checkpoint":
        (run / "latest").unlink()
    elif breakage == "hostile latest":
        (run / "latest").write_text("../../etc")
    elif breakage == "broken state":
        state.write_text('{"config": ' * 100_000)  # deeper than Python's parser goes
    elif breakage == "metrics elsewhere":  # a state.json from someone else must not point outside the run
        stored = json.loads(state.read_text())
        stored["config"]["train"]["metrics_file"] = "../../x/metrics.jsonl"
        state.write_text(json.dumps(stored))
    result = calibrate(str(run))
    assert result.exit_code == 2, result.stdout
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


def test_the_flags_are_checked(workdir: Path) -> None:
    run = str(workdir / "runs" / "demo")
    for args, words in (
        (["--warmup-steps", "-1"], "--warmup-steps must be 0 or more"),
        (["--cpu-tflops", "0"], "--cpu-tflops must be positive"),
        (["--hardware", "9xH100"], "9xH100"),
        (["--config", "missing.toml"], "config file not found: missing.toml"),
    ):
        result = calibrate(run, *args)
        assert result.exit_code == 2 and result.stderr.startswith("error: ") and words in result.stderr, args


# ---- Light, and documented as it runs --------------------------------------------------------------------


def documented_commands() -> list[str]:
    """The README's `llmgen calibrate` line and the commands of docs/estimator.md's calibrate section."""
    readme = [line.split("#")[0].strip() for line in (ROOT / "README.md").read_text().splitlines()]
    section = (ROOT / "docs" / "estimator.md").read_text().split("## Calibrate", 1)[1].split("\n## ", 1)[0]
    doc = [m.group(1) for m in re.finditer(r"^\$ (llmgen calibrate .*)$", section, re.MULTILINE)]
    commands = [line for line in readme if line.startswith("llmgen calibrate")] + doc
    return list(dict.fromkeys(commands))  # each once


def test_the_documented_commands_run_as_written_without_importing_torch(workdir: Path) -> None:
    """Python lists every module a process imports with PYTHONPROFILEIMPORTTIME; torch must not be one
    (llmgen commands stay light: torch takes seconds to import)."""
    commands = documented_commands()
    assert len(commands) == 3, commands
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "COLUMNS": "120",
        "PYTHONPROFILEIMPORTTIME": "1",
    }
    for command in commands:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        assert "tokens" in done.stdout and "Traceback" not in done.stderr, command
        imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
        assert "generator.commands.calibrate" in imported and "torch" not in imported, command
