"""`llmgen estimate` through typer's CliRunner, on a small app that registers the command and maps
LLMGenError to `error: <message>` and exit code 2, as generator/cli.py does."""

from __future__ import annotations

import functools
import json

import pytest
import typer
from typer.testing import CliRunner

from generator.commands.estimate import register
from generator.errors import LLMGenError


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A group, so the command is invoked by name as in `llmgen estimate`."""

    register(app)
    for info in app.registered_commands:
        info.callback = _mapping_errors(info.callback)
    return app


def _mapping_errors(callback):
    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except LLMGenError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None

    return wrapper


APP = make_app()


@pytest.fixture(autouse=True)
def _fixed_cpu_peak(monkeypatch):
    monkeypatch.setenv("LLMGEN_CPU_TFLOPS", "0.5")


def run(*args: str):
    return CliRunner().invoke(APP, ["estimate", *args])


def run_json(*args: str) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # stdout holds exactly one JSON document


def test_json_has_the_documented_keys():
    data = run_json("--model", "gpt2-124m", "--hardware", "1xRTX4090", "--tokens", "10B")
    for key in (
        "params",
        "tokens",
        "flops",
        "gpu_hours",
        "wall_hours",
        "cost_usd",
        "mfu",
        "memory_per_gpu_gib",
        "memory_breakdown_gib",
        "fits",
        "assumptions",
        "suggestions",
        "flops_attention",
        "parallelism",
    ):
        assert key in data
    assert data["tokens"] == 10e9 and data["parallelism"] == "single"
    assert set(data["memory_breakdown_gib"]) >= {"weights", "gradients", "optimizer", "activations"}


def test_defaults_are_demo_on_cpu_with_chinchilla_tokens():
    data = run_json()
    assert data["model"] == "demo" and data["hardware"] == "cpu"
    assert data["tokens"] == pytest.approx(20 * data["params"])
    assert data["cost_usd"] == 0


def test_table_output_shows_results_and_assumptions():
    result = run(
        "--model",
        "llama-8b",
        "--hardware",
        "4x8xH100",
        "--parallelism",
        "zero3",
        "--tokens",
        "15T",
        "--activation-checkpointing",
        "full",
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("llama-8b", "GPU-hours", "6·N·D", "memory per GPU", "Assumptions", "MFU", "zero3", "KV cache"):
        assert text in out


def test_not_fitting_prints_suggestions():
    result = run("--model", "llama-8b", "--hardware", "4x8xH100", "--parallelism", "zero3", "--micro-batch", "2")
    assert result.exit_code == 0
    assert "DOES NOT FIT" in result.stdout and "--activation-checkpointing full" in result.stdout


def test_exact_shape_and_params():
    shaped = run_json(
        "--layers",
        "4",
        "--d-model",
        "256",
        "--heads",
        "8",
        "--kv-heads",
        "2",
        "--vocab",
        "1000",
        "--seq-len",
        "128",
        "--untied",
        "--arch",
        "llama",
    )
    assert shaped["params"] > 0 and shaped["seq_len"] == 128
    seven = run_json("--params", "7B", "--hardware", "8xH100", "--tokens", "1T")
    assert abs(seven["params"] / 7e9 - 1) < 0.05


def test_budget_gives_compute_optimal_model_and_nearest_preset():
    data = run_json("--budget", "$50k")
    plan = data["budget"]
    assert plan["hardware"] == "8xH100-SXM"
    assert plan["compute_optimal"]["params"] > 1e9
    assert data["model"] == plan["nearest_preset"]["name"]
    table = run("--budget", "8xH100 for 14 days")
    assert table.exit_code == 0 and "Hoffmann" in table.stdout and "20 tokens/param" in table.stdout
    laptop = run_json("--budget", "laptop")
    assert laptop["hardware"] == "cpu" and any("10 minutes" in n for n in laptop["budget"]["assumptions"])


@pytest.mark.parametrize(
    "args, words",
    [
        (("--params", "abc"), "--params"),
        (("--params", "-7B"), "--params"),
        (("--tokens", "0"), "--tokens"),
        (("--layers", "0"), "--layers"),
        (("--d-model", "500", "--heads", "7"), "--heads 7 must divide --d-model 500"),
        (("--heads", "6", "--kv-heads", "4"), "--kv-heads 4 must divide --heads 6"),
        (("--hardware", "8xH1000"), "unknown GPU"),
        (("--budget", "a lot"), "--budget"),
        (("--hardware", "8xH100", "--tp", "16"), "--tp 16"),
        (("--model", "gpt-5"), "--model"),
        (("--budget", "$5k", "--model", "demo"), "--budget"),
        (("--micro-batch", "0"), "--micro-batch"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, words):
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_unknown_gpu_suggests_closest_name():
    result = run("--hardware", "8xH1OO")
    assert result.exit_code == 2 and "did you mean" in result.stderr and "B200" in result.stderr


def test_choice_flags_reject_unknown_values():
    result = run("--parallelism", "zero4")
    assert result.exit_code == 2  # typer/click's own usage error, also exit 2


def test_registered_in_the_real_llmgen_app():
    from generator.cli import app

    ok = CliRunner().invoke(app, ["estimate", "--model", "tiny", "--tokens", "1M", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["model"] == "tiny"
    bad = CliRunner().invoke(app, ["estimate", "--hardware", "8xH10"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --hardware")


def test_params_is_the_n_of_six_n_d():
    """`--params 175e9` means 175B: 6·N·D uses it (was 169.6B, the shape's count), and the shape sized for
    memory is within 1% of it."""
    data = run_json("--params", "175e9", "--hardware", "64x8xA100", "--tokens", "300B")
    assert data["flops_params"] == 175e9 and data["flops"] == pytest.approx(6 * 175e9 * 300e9)
    assert abs(data["params"] / 175e9 - 1) <= 0.01
    table = run("--params", "175e9", "--hardware", "64x8xA100", "--tokens", "300B")
    text = " ".join(table.stdout.replace("│", " ").split())
    assert "6·N·D uses N = 175B (as given with --params)" in text and "without embeddings" not in text


def test_the_estimate_states_one_set_of_figures():
    """The parallelism reason, the memory row and the usable figure agree (was: 3.7 GiB "replicated" at
    micro-batch 1 beside 37.9 GiB per GPU, 79 beside 78.6 usable); a months-long run says what finishes
    it sooner."""
    data = run_json("--model", "gpt2-124m", "--hardware", "8xH100", "--tokens", "10B")
    assert (
        f"{data['memory_per_gpu_gib']:.1f} GiB per GPU at micro-batch {data['micro_batch']}"
        in data["parallelism_reason"]
    )
    assert f"{data['memory_usable_gib']:.1f} GiB usable" in data["parallelism_reason"] and data["faster"] is None
    long = run_json("--model", "llama-70b", "--hardware", "8xH100", "--tokens", "1.4T", "--micro-batch", "1")
    assert long["wall_hours"] > 1000 * 24 and long["faster"].startswith("--hardware ")


def test_a_budget_is_spent_at_the_mfu_of_the_model_it_buys():
    data = run_json("--budget", "$50k")
    assert data["mfu"] == pytest.approx(data["budget"]["mfu"])
    assert data["cost_usd"] == pytest.approx(50_000, rel=0.001)
