"""`llmgen new` through Typer's CliRunner: flags, --yes, prompts from piped input, --dry-run, --answers,
--force, git, and every bad input with its exit code, its one-line message and nothing written."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from generator.cli import app

pytestmark = pytest.mark.usefixtures("fixed_cpu", "template_cache")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, ["new", *args], input=input, env={"COLUMNS": "200"})


def answers_of(project: Path) -> dict:
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


def test_yes_takes_the_beginner_defaults(workdir):
    result = run("demo", "--yes", "--no-git")
    assert result.exit_code == 0, result.output
    answers = answers_of(workdir / "demo")
    expected = {"project_name": "demo", "package_name": "demo", "track": "beginner", "budget": "laptop",
                "hardware": "cpu", "gpu": "cpu", "nodes": 1, "gpus_per_node": 1, "parallelism": "single",
                "model_preset": "demo", "precision": "auto", "micro_batch": 8, "grad_accum": 1, "exercises": True}
    assert {k: answers[k] for k in expected} == expected
    assert answers["max_steps"] * 8 * 256 >= answers["tokens"]
    for path in ("configs/train.toml", "data/shakespeare.txt", "data/manifest.toml", "src/demo/paths.py",
                 "tests/checkpoints/test_training.py", "README.md", "Makefile", "pyproject.toml",
                 ".github/workflows/ci.yml", "ROADMAP.md", "COMPLIANCE.md"):
        assert (workdir / "demo" / path).is_file(), path
    assert not (workdir / "demo" / ".git").exists()
    assert "auto chose single" in result.stdout and "fits" in result.stdout
    assert "make demo" in result.stdout and "make test" in result.stdout
    assert not [p for p in workdir.iterdir() if p.name.startswith(".")], "staging directory left behind"


def test_flags_answer_every_question(workdir):
    result = run("gpt", "--track", "practitioner", "--budget", "200 gpu-hours", "--hardware", "8xH100",
                 "--parallelism", "auto", "--model-preset", "gpt2-124m", "--no-git")
    assert result.exit_code == 0, result.output
    answers = answers_of(workdir / "gpt")
    assert (answers["gpu"], answers["nodes"], answers["gpus_per_node"]) == ("H100-SXM", 1, 8)
    assert answers["parallelism"] in ("ddp", "zero1", "zero2", "fsdp")  # auto is resolved, never recorded
    assert answers["precision"] == "bfloat16" and answers["exercises"] is False  # H100: what auto means there
    assert f"auto chose {answers['parallelism']}" in result.stdout
    per_step = answers["micro_batch"] * answers["grad_accum"] * 1024 * 8
    assert 2**18 <= per_step <= 2**20  # about 0.5M tokens per step
    toml = (workdir / "gpt" / "configs" / "train.toml").read_text()
    assert 'strategy = "' + answers["parallelism"] + '"' in toml and "compile = true" in toml


def test_several_nodes(workdir):
    result = run("big", "--yes", "--track", "researcher", "--no-git")
    assert result.exit_code == 0, result.output
    answers = answers_of(workdir / "big")
    assert (answers["nodes"], answers["gpus_per_node"], answers["model_preset"]) == (4, 8, "llama-1b")
    assert answers["hardware"] == "4x8xH100-SXM"


def test_exercises_default_comes_from_the_track_and_the_flag_wins(workdir):
    assert run("a", "--yes", "--no-git").exit_code == 0
    assert answers_of(workdir / "a")["exercises"] is True
    assert run("b", "--yes", "--no-git", "--no-exercises").exit_code == 0
    assert answers_of(workdir / "b")["exercises"] is False
    assert run("c", "--yes", "--no-git", "--track", "practitioner", "--exercises").exit_code == 0
    assert answers_of(workdir / "c")["exercises"] is True


def test_prompts_read_piped_answers_in_order(workdir):
    # track, budget, hardware, parallelism, model preset; an empty line takes the default shown
    result = run("p", "--no-git", input="practitioner\n$100\n1xRTX4090\n\ngpt2-124m\n")
    assert result.exit_code == 0, result.output
    answers = answers_of(workdir / "p")
    assert (answers["track"], answers["budget"], answers["hardware"]) == ("practitioner", "$100", "1xRTX4090")
    assert (answers["parallelism"], answers["model_preset"]) == ("single", "gpt2-124m")
    for name in ("track", "budget", "hardware", "parallelism", "model_preset"):
        assert name in result.stderr  # prompts go to stderr, data to stdout
    assert "beginner | practitioner | researcher" in result.stderr


def test_prompt_defaults_follow_the_chosen_track(workdir):
    result = run("r", "--no-git", input="researcher\n\n\n\n\n")
    assert result.exit_code == 0, result.output
    answers = answers_of(workdir / "r")
    assert (answers["model_preset"], answers["hardware"], answers["budget"]) == ("llama-1b", "4x8xH100-SXM",
                                                                                  "500 gpu-hours")


def test_flags_skip_their_prompts(workdir):
    result = run("q", "--no-git", "--track", "beginner", "--budget", "laptop", "--hardware", "cpu",
                 input="\n\n")
    assert result.exit_code == 0, result.output
    assert "track (" not in result.stderr and "parallelism (" in result.stderr


def test_dry_run_prints_answers_and_files_and_writes_nothing(workdir, snapshot):
    before = snapshot(workdir)
    result = run("dry", "--yes", "--dry-run")
    assert result.exit_code == 0, result.output
    assert snapshot(workdir) == before
    assert "project_name: dry" in result.stdout and "parallelism: single" in result.stdout
    for path in ("configs/train.toml", "src/dry/config.py", "data/shakespeare.txt", ".copier-answers.yml"):
        assert f"  {path}" in result.stdout


def test_answers_file_replays_a_project(workdir):
    assert run("first", "--track", "practitioner", "--budget", "$100", "--hardware", "2xA100",
               "--parallelism", "zero2", "--model-preset", "gpt2-350m", "--micro-batch", "4", "--no-git").exit_code == 0
    result = run("second", "--answers", "first/.copier-answers.yml", "--no-git")
    assert result.exit_code == 0, result.output
    first, second = answers_of(workdir / "first"), answers_of(workdir / "second")
    for name in ("project_name", "package_name"):
        assert (first.pop(name), second.pop(name)) == ("first", "second")
    # The roadmap names the project's run folder and package: the only other place the name appears.
    assert yaml.safe_dump(first).replace("first", "second") == yaml.safe_dump(second)
    assert (workdir / "second" / "configs" / "deepspeed.json").is_file()


def test_flags_override_the_answers_file(workdir):
    (workdir / "answers.yml").write_text("track: researcher\nhardware: 8xA100\nbudget: $100\n"
                                         "parallelism: fsdp\nmodel_preset: gpt2-124m\n")
    result = run("x", "--answers", "answers.yml", "--parallelism", "ddp", "--no-git")
    assert result.exit_code == 0, result.output
    answers = answers_of(workdir / "x")
    assert (answers["track"], answers["parallelism"], answers["gpu"]) == ("researcher", "ddp", "A100-80GB")


def test_force_writes_into_a_non_empty_directory_keeping_other_files(workdir):
    (workdir / "proj").mkdir()
    (workdir / "proj" / "notes.txt").write_text("mine")
    (workdir / "proj" / "README.md").write_text("old readme")
    result = run("proj", "--yes", "--force", "--no-git")
    assert result.exit_code == 0, result.output
    assert (workdir / "proj" / "notes.txt").read_text() == "mine"
    assert (workdir / "proj" / "README.md").read_text().startswith("# proj")
    assert (workdir / "proj" / "configs" / "train.toml").is_file()


def test_dir_option_and_an_empty_existing_directory(workdir):
    (workdir / "empty").mkdir()
    assert run("one", "--yes", "--no-git", "--dir", "empty").exit_code == 0
    assert (workdir / "empty" / "src" / "one").is_dir()
    assert run("two", "--yes", "--no-git", "--dir", "build/nested/two").exit_code == 0
    assert (workdir / "build" / "nested" / "two" / "configs" / "train.toml").is_file()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_first_commit_with_a_fallback_identity(workdir, monkeypatch):
    home = workdir / "home"
    home.mkdir()
    for key, value in {"HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
                       "XDG_CONFIG_HOME": str(home)}.items():
        monkeypatch.setenv(key, value)
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(key, raising=False)
    result = run("gitted", "--yes")
    assert result.exit_code == 0, result.output
    log = subprocess.run(["git", "log", "--format=%an <%ae>|%s"], cwd=workdir / "gitted", capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()
    assert log == ["llmgen <llmgen@localhost>|Generated by llmgen new (track beginner, model demo)"]
    status = subprocess.run(["git", "status", "--porcelain"], cwd=workdir / "gitted", capture_output=True,
                            text=True, check=True).stdout
    assert status == ""  # everything generated is committed
    assert not subprocess.run(["git", "config", "user.name"], cwd=workdir / "gitted").returncode == 0


# ----------------------------------------------------------------------------------------------------
# Bad input: exit code 2, one line on stderr naming the flag, nothing written or changed
# ----------------------------------------------------------------------------------------------------

BAD = {
    "name ../x": (["../x", "--yes"], "project name '../x'"),
    "name a/b": (["a/b", "--yes"], "project name 'a/b'"),
    "name template": (["{{ 7*7 }}", "--yes"], "project name '{{ 7*7 }}'"),
    "name empty": (["", "--yes"], "project name '' must not be empty"),
    "name keyword": (["class", "--yes"], "is a Python keyword"),
    "name leading digit": (["1st", "--yes"], "must start with a letter"),
    "name dot": (["my.llm", "--yes"], "may only contain letters, digits, - and _"),
    "name stdlib": (["json", "--yes"], "would shadow the standard-library module json"),
    "unknown track": (["x", "--yes", "--track", "expert"], "--track must be one of beginner, practitioner, researcher"),
    "unknown hardware": (["x", "--yes", "--hardware", "8xZ100"], "--hardware: unknown GPU 'Z100'"),
    "unparseable hardware": (["x", "--yes", "--hardware", "lots of GPUs"], "--hardware 'lots of GPUs' not understood"),
    "unknown parallelism": (["x", "--yes", "--parallelism", "tensor"], "--parallelism must be one of auto, single"),
    "unparseable budget": (["x", "--yes", "--budget", "a lot"], "--budget 'a lot' not understood"),
    "dollars on cpu": (["x", "--yes", "--budget", "$500"], "--hardware cpu has no hourly price"),
    "zero3 on cpu": (["x", "--yes", "--parallelism", "zero3"], "--parallelism: zero3 needs several processes or GPUs"),
    "single on a node": (["x", "--yes", "--hardware", "8xH100", "--parallelism", "single"],
                         "--parallelism: single runs on one device"),
    "ddp on one gpu": (["x", "--yes", "--hardware", "1xA100", "--parallelism", "ddp"], "--parallelism: ddp replicates"),
    "unknown preset": (["x", "--yes", "--model-preset", "gpt5"], "--model-preset: must be one of tiny"),
    "zero micro-batch": (["x", "--yes", "--micro-batch", "0"], "--micro-batch: must be at least 1"),
    "bad precision": (["x", "--yes", "--precision", "fp16"], "--precision must be one of auto, float32, bfloat16"),
    "bad tokens": (["x", "--yes", "--tokens", "many"], "--tokens 'many' is not a number"),
    "missing answers file": (["x", "--answers", "nope.yml"], "--answers nope.yml: cannot read"),
    "unknown flag": (["x", "--yes", "--colour"], "No such option: --colour"),
    "missing name": ([], "Missing argument 'name'"),
    "no input": (["x"], "no answer for --track, --budget, --hardware, --parallelism, --model-preset"),
    "bad piped answer": (["x", "--track", "beginner"], "--budget 'plenty' not understood"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workdir, snapshot, case):
    (workdir / "keep.txt").write_text("untouched")
    before = snapshot(workdir)
    args, expected = BAD[case]
    result = run(*args, input="plenty\n" if case == "bad piped answer" else "")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1], result.stderr
    assert snapshot(workdir) == before
    assert "Traceback" not in result.output


def test_non_empty_directory_without_force(workdir, snapshot):
    (workdir / "proj").mkdir()
    (workdir / "proj" / "mine.py").write_text("print('mine')\n")
    before = snapshot(workdir)
    result = run("proj", "--yes", "--no-git")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: directory proj exists and is not empty; pass --force to write into it "
                                     "(files with the same names are replaced, others are kept)")
    assert snapshot(workdir) == before


def test_precision_is_recorded_in_reference_llms_spelling(workdir):
    """The short name a person types is recorded, and reaches train.toml, as reference_llm spells it."""
    result = run("short", "--yes", "--precision", "fp32", "--no-git")
    assert result.exit_code == 0, result.output
    assert answers_of(workdir / "short")["precision"] == "float32"
    assert 'dtype = "float32"' in (workdir / "short" / "configs" / "train.toml").read_text()


def test_answers_file_with_unknown_key(workdir, snapshot):
    (workdir / "answers.yml").write_text("track: beginner\ncolour: red\n")
    before = snapshot(workdir)
    result = run("x", "--answers", "answers.yml", "--yes")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --answers answers.yml: unknown key(s) colour; known: project_name")
    assert snapshot(workdir) == before
