"""`llmgen check` inside generated projects: a consistent project with enough data is ready; each kind of
disagreement (world size, DeepSpeed config, sequence length, a missing DeepSpeed) and each broken
invariant of the plan (memory, batch, steps, warm-up, learning rate, data, budget) fails with a row that
says what is wrong and how to fix it, and exit code 2."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from generator.cli import app

PROJECTS = {
    "zero3-4x8": {"hardware": "4x8xH100", "parallelism": "zero3", "model_preset": "llama-8b"},
    "fsdp-4x8": {"hardware": "4x8xH100", "parallelism": "fsdp", "model_preset": "llama-8b"},
    "cpu": {"hardware": "cpu", "parallelism": "single", "model_preset": "demo"},
}


# These projects plan 1e9 tokens, far more than 4 epochs of the bundled 1.1 MB corpus. "Bringing data" in
# these tests is a corpus file of the size a real one would have: check reads sizes, not text, so a sparse
# file of 16 GiB stands for it without taking the space. It lives outside the projects (copying a project
# would write it out in full), and data.corpus names it by its absolute path.


@pytest.fixture(scope="module")
def with_data(tmp_path_factory) -> str:
    """The override that points a project at the big corpus."""
    big = tmp_path_factory.mktemp("corpus") / "big.txt"
    with open(big, "wb") as f:
        f.truncate(2**34)
    return f"data.corpus={big}"


@pytest.fixture(scope="module")
def rendered(render_projects) -> dict[str, Path]:
    return render_projects(PROJECTS)


@pytest.fixture
def project(rendered, tmp_path):
    """A private copy of a rendered project, free to be edited."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(rendered[name], target)
        return target

    return copy


@pytest.fixture(autouse=True)
def no_launcher_env(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line


def check(directory: Path, *args: str):
    result = CliRunner().invoke(app, ["check", "--dir", str(directory), *args])
    return result


def failed(found: dict[str, list[dict]]) -> dict[str, str]:
    return {name: r["message"] for name, group in found.items() for r in group if r["status"] == "fail"}


def rows(directory: Path, *args: str) -> tuple[int, dict[str, list[dict]]]:
    result = check(directory, "--json", *args)
    doc = json.loads(result.stdout)
    by_name: dict[str, list[dict]] = {}
    for row in doc["checks"]:
        by_name.setdefault(row["name"], []).append(row)
    assert doc["ok"] == (result.exit_code == 0)
    return result.exit_code, by_name


@pytest.mark.parametrize("name", list(PROJECTS))
def test_generated_project_is_ready_once_it_has_the_data_its_plan_needs(rendered, with_data, name):
    code, found = rows(rendered[name])
    assert code == 2 and set(failed(found)) == {"data"}, found
    message = failed(found)["data"]
    assert message.startswith("1B tokens are ") and "epochs of data/shakespeare.txt" in message
    assert "fix: bring more text: python -m reference_llm.data.manifest add" in message

    code, found = rows(rendered[name], with_data)
    assert code == 0, failed(found)
    assert {
        "train config",
        "world size",
        "strategy",
        "batch",
        "sequence",
        "memory",
        "steps",
        "warm-up",
        "learning rate",
        "data",
        "budget",
    } <= set(found)
    assert all(r["status"] == "ok" for group in found.values() for r in group), found
    assert ("deepspeed config" in found) == name.startswith("zero")
    assert found["data"][0]["message"].endswith(f"epochs of {with_data.split('=')[1]}")


def test_table_output_names_the_launch_command(rendered, with_data):
    result = check(rendered["zero3-4x8"], with_data)
    assert result.exit_code == 0, result.output
    assert "deepspeed config" in result.stdout and "stage 3" in result.stdout
    assert "ready: sbatch scripts/slurm.sbatch" in result.stdout
    assert "ready: bash scripts/train.sh" in check(rendered["cpu"], with_data).stdout
    assert "ready" not in check(rendered["cpu"]).stdout.splitlines()[-1]  # no data: not ready


@pytest.mark.parametrize(
    "overrides, row, fix",
    [
        # 409,600 tokens per step where DeepSeek LLM's fit gives ~42k for this run's compute
        (
            ["train.grad_accum=200", "train.max_steps=1000", "train.warmup_steps=20"],
            "batch",
            "fix: train.micro_batch = 8, train.grad_accum = 20",
        ),
        (
            ["train.grad_accum=1", "train.max_steps=36"],
            "steps",
            "fix: train.max_steps = 200 (410k tokens), or a smaller batch",
        ),
        (["train.warmup_steps=1"], "warm-up", "fix: train.warmup_steps = "),
        (["train.lr=0.5"], "learning rate", "fix: train.lr = 0.001, train.min_lr = 0.0001"),
        (["train.max_steps=181000"], "budget", "more than the budget 200 GPU-hours; fix: train.max_steps = "),
        (["data.corpus=data/missing.txt"], "data", "corpus data/missing.txt not found"),
    ],
)
def test_a_broken_invariant_fails_with_its_fix(rendered, with_data, overrides, row, fix):
    """Each invariant of a signable plan, broken by overrides of the CPU project (which has data), fails
    its own row alone and says how to fix it."""
    code, found = rows(rendered["cpu"], with_data, *overrides)
    assert code == 2 and set(failed(found)) == {row}, failed(found)
    assert fix in failed(found)[row]


def test_world_size_from_the_launcher_must_match_the_plan(rendered, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "16")
    code, found = rows(rendered["zero3-4x8"])
    assert code == 2
    assert found["world size"][0]["status"] == "fail"
    assert "WORLD_SIZE=16 but the project is planned for 4 nodes x 8 = 32" in found["world size"][0]["message"]
    # At 16 processes the DeepSpeed batch arithmetic no longer holds either.
    assert any("train_batch_size" in r["message"] and "× 16 =" in r["message"] for r in found["deepspeed config"])


def test_deepspeed_json_that_disagrees_with_train_toml_fails(project):
    p = project("zero3-4x8")
    path = p / "configs" / "deepspeed.json"
    ds = json.loads(path.read_text())
    ds["gradient_accumulation_steps"] += 1
    path.write_text(json.dumps(ds))
    code, found = rows(p)
    assert code == 2
    messages = [r["message"] for r in found["deepspeed config"] if r["status"] == "fail"]
    assert any(
        m.startswith(
            f"deepspeed.json gradient_accumulation_steps={ds['gradient_accumulation_steps']} but train.grad_accum="
        )
        for m in messages
    ), messages


def test_missing_deepspeed_json_fails(project):
    p = project("zero3-4x8")
    (p / "configs" / "deepspeed.json").unlink()
    code, found = rows(p)
    assert code == 2 and "deepspeed.json not found" in found["deepspeed config"][0]["message"]


def test_sequence_longer_than_the_model_fails(rendered):
    code, found = rows(rendered["cpu"], "train.seq_len=100000")
    assert code == 2
    assert "train.seq_len=100000 must be between 1 and model.block_size=256" in found["train config"][0]["message"]


def test_model_that_does_not_fit_fails_with_the_memory_figures(rendered):
    # llama-8b replicated by DDP: ~16 bytes of weights, gradients and Adam state per parameter per GPU.
    code, found = rows(rendered["fsdp-4x8"], "distributed.strategy=ddp")
    assert code == 2
    memory = found["memory"][0]
    assert memory["status"] == "fail" and memory["message"].startswith("does not fit:")
    assert "GiB needed per H100-SXM" in memory["message"]
    assert found["strategy"][0]["status"] == "warn"  # ddp in the overrides, fsdp in the plan


def test_missing_deepspeed_install_fails(rendered, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what find_spec sees when it is not installed
    code, found = rows(rendered["zero3-4x8"])
    assert code == 2
    assert "pip install 'llmgen[deepspeed]'" in found["strategy"][0]["message"]


def test_outside_a_generated_project_is_a_one_line_error(tmp_path):
    result = check(tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: ") and ".copier-answers.yml not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
