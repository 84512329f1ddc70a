"""`llmgen new` through Typer's CliRunner: flags, --yes, prompts from piped input (with `back`), the
confirmation a plan with warnings needs, budget and hardware agreeing, --dry-run, --answers, --force, git,
and every bad input with its exit code, its one-line message and nothing written."""

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
    expected = {
        "project_name": "demo",
        "package_name": "demo",
        "track": "beginner",
        "budget": "laptop",
        "hardware": "cpu",
        "gpu": "cpu",
        "nodes": 1,
        "gpus_per_node": 1,
        "parallelism": "single",
        "model_preset": "demo",
        "precision": "auto",
        "micro_batch": 8,
        "grad_accum": 3,
        "exercises": True,
        "warmup_steps": 20,
        "min_lr": 0.0001,
        "tokenizer": "bpe",
    }
    assert {k: answers[k] for k in expected} == expected
    assert answers["max_steps"] * 8 * 3 * 256 == answers["tokens"] and answers["max_steps"] >= 200
    for path in (
        "configs/train.toml",
        "data/shakespeare.txt",
        "data/manifest.toml",
        "src/demo/paths.py",
        "tests/checkpoints/test_training.py",
        "README.md",
        "Makefile",
        "pyproject.toml",
        ".github/workflows/ci.yml",
        "ROADMAP.md",
        "COMPLIANCE.md",
    ):
        assert (workdir / "demo" / path).is_file(), path
    assert not (workdir / "demo" / ".git").exists()
    assert "auto chose single" in result.stdout and "fits" in result.stdout and "warning" not in result.output
    assert "make demo" in result.stdout and "make test" in result.stdout
    assert not [p for p in workdir.iterdir() if p.name.startswith(".")], "staging directory left behind"


def test_flags_answer_every_question(workdir):
    # The bundled corpus is far too small for GPT-2 124M's compute-optimal tokens: the plan warns, and
    # without --yes it renders only once confirmed.
    result = run(
        "gpt",
        "--track",
        "practitioner",
        "--budget",
        "200 gpu-hours",
        "--hardware",
        "8xH100",
        "--parallelism",
        "auto",
        "--model",
        "gpt2-124m",
        "--no-git",
        input="y\n",
    )
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
    # track, budget, hardware, parallelism, model, tp (asked on this track: several layouts run); the last
    # line confirms the warnings
    result = run("r", "--no-git", input="researcher\n\n\n\n\n\ny\n")
    assert result.exit_code == 0, result.output
    answers = answers_of(workdir / "r")
    assert (answers["model_preset"], answers["hardware"], answers["budget"]) == (
        "llama-1b",
        "4x8xH100-SXM",
        "500 gpu-hours",
    )


def test_flags_skip_their_prompts(workdir):
    result = run("q", "--no-git", "--track", "beginner", "--budget", "laptop", "--hardware", "cpu", input="\n\n")
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
    assert (
        run(
            "first",
            "--track",
            "practitioner",
            "--budget",
            "$100",
            "--hardware",
            "2xA100",
            "--parallelism",
            "zero2",
            "--model",
            "gpt2-350m",
            "--micro-batch",
            "4",
            "--no-git",
            "--yes",
        ).exit_code
        == 0
    )
    result = run("second", "--answers", "first/.copier-answers.yml", "--no-git", "--yes")
    assert result.exit_code == 0, result.output
    first, second = answers_of(workdir / "first"), answers_of(workdir / "second")
    for name in ("project_name", "package_name"):
        assert (first.pop(name), second.pop(name)) == ("first", "second")
    # The roadmap names the project's run folder and package: the only other place the name appears.
    # (dumped without line wrapping: "first" and "second" differ in length, which moves yaml's line breaks)
    unwrapped = dict(width=float("inf"))
    assert yaml.safe_dump(first, **unwrapped).replace("first", "second") == yaml.safe_dump(second, **unwrapped)
    assert (workdir / "second" / "configs" / "deepspeed.json").is_file()


def test_flags_override_the_answers_file(workdir):
    (workdir / "answers.yml").write_text(
        "track: researcher\nhardware: 8xA100\nbudget: $100\nparallelism: fsdp\nmodel_preset: gpt2-124m\n"
    )
    result = run("x", "--answers", "answers.yml", "--parallelism", "ddp", "--no-git", "--yes")
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
    for key, value in {
        "HOME": str(home),
        "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "XDG_CONFIG_HOME": str(home),
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(key, raising=False)
    result = run("gitted", "--yes")
    assert result.exit_code == 0, result.output
    log = (
        subprocess.run(
            ["git", "log", "--format=%an <%ae>|%s"], cwd=workdir / "gitted", capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()
    )
    assert log == ["llmgen <llmgen@localhost>|Generated by llmgen new (track beginner, model demo)"]
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=workdir / "gitted", capture_output=True, text=True, check=True
    ).stdout
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
    "dollars on cpu": (
        ["x", "--yes", "--budget", "$500", "--hardware", "cpu"],
        "--budget '$500' is in dollars but --hardware cpu has no hourly price; use a GPU "
        "(--hardware 8xH100) or a time budget (--budget 'cpu for 2 hours')",
    ),
    "budget on other hardware": (
        ["x", "--yes", "--budget", "8xH100 for 3 days", "--hardware", "1xRTX4090"],
        "--budget '8xH100 for 3 days' runs on 8xH100-SXM but --hardware is 1xRTX4090; "
        "give one of them, e.g. --hardware 1xRTX4090 --budget '1xRTX4090 for 3 days'",
    ),
    "laptop on a GPU": (
        ["x", "--yes", "--budget", "laptop", "--hardware", "8xH100"],
        "--budget 'laptop' runs on cpu but --hardware is 8xH100-SXM",
    ),
    "name test": (["test", "--yes"], "would shadow the standard-library module test"),
    "name torch": (["Torch", "--yes"], "would shadow the package or folder Torch"),
    "name device": (["CON", "--yes"], "is a device name Windows reserves (CON)"),
    "name case": (["Json", "--yes"], "would shadow the standard-library module json (names that differ only in case"),
    "zero3 on cpu": (["x", "--yes", "--parallelism", "zero3"], "--parallelism: zero3 needs several processes or GPUs"),
    "single on a node": (
        ["x", "--yes", "--hardware", "8xH100", "--parallelism", "single"],
        "--parallelism: single runs on one device; with 8 GPUs use ddp, fsdp or zero1/zero2/zero3 "
        "(--hardware 8xH100-SXM; --parallelism auto picks for you)",
    ),
    "ddp on one gpu": (["x", "--yes", "--hardware", "1xA100", "--parallelism", "ddp"], "--parallelism: ddp replicates"),
    "unknown preset": (["x", "--yes", "--model", "gpt5"], "--model: must be one of tiny"),
    "both preset spellings": (
        ["x", "--yes", "--model", "demo", "--model-preset", "demo"],
        "--model-preset and --model are the same flag",
    ),
    "zero micro-batch": (["x", "--yes", "--micro-batch", "0"], "--micro-batch: must be at least 1"),
    "bad precision": (["x", "--yes", "--precision", "fp16"], "--precision must be one of auto, float32, bfloat16"),
    "bad tokens": (["x", "--yes", "--tokens", "many"], "--tokens 'many' is not a number"),
    "missing answers file": (["x", "--answers", "nope.yml"], "--answers nope.yml: cannot read"),
    "unknown flag": (["x", "--yes", "--colour"], "No such option: --colour"),
    "missing name": ([], "Missing argument 'name'"),
    "no confirmation": (
        [
            "x",
            "--track",
            "practitioner",
            "--budget",
            "$500",
            "--hardware",
            "8xH100",
            "--parallelism",
            "auto",
            "--model",
            "gpt2-124m",
        ],
        "the plan has warnings and no confirmation came (input ended); nothing written; pass --yes",
    ),
    "no input": (["x"], "no answer for --track, --budget, --hardware, --parallelism, --model"),
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
    assert result.stderr.strip() == (
        "error: directory proj exists and is not empty; pass --force to write into it "
        "(files with the same names are replaced, others are kept)"
    )
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


# ----------------------------------------------------------------------------------------------------
# Budget, hardware and model agree; a plan with warnings is confirmed or rendered with --yes
# ----------------------------------------------------------------------------------------------------


def test_hardware_without_a_budget_keeps_the_tracks_time_on_it(workdir):
    """`--hardware 1xRTX4090 --yes` (beginner): the track's laptop budget becomes ten minutes of the GPU,
    and the plan is the demo's, not 'what cpu for 10 minutes buys' with 0.5M tokens per step."""
    result = run("r", "--hardware", "1xRTX4090", "--yes", "--no-git")
    assert result.exit_code == 0 and result.stderr == "", result.output
    answers = answers_of(workdir / "r")
    assert (answers["budget"], answers["hardware"]) == ("1xRTX4090 for 10 minutes", "1xRTX4090")
    assert "the track's 'laptop' on this hardware" in result.stdout
    per_step = answers["micro_batch"] * answers["grad_accum"] * 256
    assert answers["max_steps"] >= 200 and 2_000 <= per_step <= 30_000 and 20 <= answers["warmup_steps"]


def test_hardware_and_a_larger_model(workdir):
    result = run("r", "--hardware", "1xRTX4090", "--model", "gpt2-124m", "--yes", "--no-git")
    assert result.exit_code == 0 and result.stderr == "", result.output
    answers = answers_of(workdir / "r")
    assert answers["max_steps"] >= 200 and answers["min_lr"] == 6e-05
    assert "capped at 4 epochs of data/shakespeare.txt" in " ".join(result.stdout.split())
    assert "min_lr = 6e-05\n" in (workdir / "r" / "configs" / "train.toml").read_text()


def test_a_dollar_budget_picks_a_gpu_and_says_so(workdir):
    result = run("hw", "--budget", "$500", "--yes", "--no-git")
    assert result.exit_code == 0, result.output
    assert answers_of(workdir / "hw")["hardware"] == "8xH100-SXM"
    assert "hardware 8xH100-SXM: a dollar budget is priced on a GPU" in " ".join(result.stdout.split())


def test_a_budget_that_names_hardware_sets_it(workdir):
    result = run("hw", "--budget", "8xH100 for 3 days", "--yes", "--no-git")
    assert result.exit_code == 0, result.output
    answers = answers_of(workdir / "hw")
    assert (answers["hardware"], answers["nodes"], answers["gpus_per_node"]) == ("8xH100-SXM", 1, 8)
    assert "hardware 8xH100-SXM: the budget names it" in " ".join(result.stdout.split())


def test_yes_renders_a_plan_with_warnings_and_prints_them_on_stderr(workdir):
    """The practitioner default trains GPT-2 124M on 2.49B tokens: thousands of epochs of the bundled
    corpus. It renders with --yes, the warning names the epochs and how to bring data."""
    result = run("p", "--track", "practitioner", "--yes", "--no-git")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: data: 2.49B tokens are ")
    assert "epochs of data/shakespeare.txt" in warnings[0]
    assert "python -m reference_llm.data.manifest add data/<corpus>" in warnings[0]
    assert (workdir / "p" / "configs" / "train.toml").is_file()


def test_the_budget_offers_the_largest_model_it_trains(workdir):
    """'$2000 would buy 1.11e+12, pass --tokens': now the tokens have a unit and a model, and the panel
    names the larger preset the budget trains compute-optimally."""
    result = run("p", "--track", "practitioner", "--budget", "$2000", "--yes", "--no-git", "--dry-run")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "$2,000 would buy 1.04T tokens of gpt2-124m" in text
    assert "$2,000 trains gpt2-1.5b (1.56B parameters) compute-optimally" in text and "pass --model gpt2-1.5b" in text


def test_a_model_that_does_not_fit_is_a_warning(workdir):
    result = run("big", "--track", "researcher", "--model", "llama-70b", "--hardware", "8xH100", "--yes", "--no-git")
    assert result.exit_code == 0, result.output
    assert "does NOT fit" in result.stdout
    assert any(line.startswith("warning: memory: ") for line in result.stderr.splitlines())


@pytest.mark.parametrize("answer, code", [("y", 0), ("n", 1), ("", 1)])
def test_warnings_are_confirmed_before_anything_is_written(workdir, snapshot, answer, code):
    before = snapshot(workdir)
    result = run(
        "p",
        "--track",
        "practitioner",
        "--budget",
        "$500",
        "--hardware",
        "8xH100",
        "--parallelism",
        "auto",
        "--model",
        "gpt2-124m",
        "--no-git",
        input=f"{answer}\n",
    )
    assert result.exit_code == code, result.output
    assert "The plan has 1 warning (above). Render it anyway? [y/N]" in result.stderr
    if code:
        assert "nothing written" in result.stderr and snapshot(workdir) == before
    else:
        assert (workdir / "p" / "configs" / "train.toml").is_file()


def test_back_changes_an_earlier_answer(workdir):
    """Beginner, budget $100: the hardware prompt's default is a GPU (was: cpu, which a dollar budget
    cannot pay for), and `back` returns to the budget; laptop there names the CPU, so the hardware is not
    asked again."""
    result = run("b", "--no-git", input="beginner\n$100\nback\nlaptop\n\n\n")
    assert result.exit_code == 0, result.output
    answers = answers_of(workdir / "b")
    assert (answers["budget"], answers["hardware"], answers["model_preset"]) == ("laptop", "cpu", "demo")
    assert "hardware [8xH100]: back" in result.stderr  # the hardware default followed the $ budget
    assert result.stderr.count("budget [") == 2 and result.stderr.count("hardware [") == 1
    assert "Type back to change the previous answer" in result.stderr


def test_the_old_preset_flag_still_works_with_a_deprecation_line(workdir):
    result = run("old", "--yes", "--no-git", "--model-preset", "tiny")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == "warning: --model-preset is deprecated; use --model"
    assert answers_of(workdir / "old")["model_preset"] == "tiny"


def test_the_commands_in_docs_generator_md_run_as_written(workdir):
    """docs/generator.md's first block, line by line, in one directory."""
    import shlex

    text = (Path(__file__).resolve().parents[2] / "docs" / "generator.md").read_text(encoding="utf-8")
    block = text.split("## `llmgen new NAME`", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    assert len(lines) == 6 and all(line.startswith("llmgen ") for line in lines)
    for line in lines:
        result = CliRunner().invoke(app, shlex.split(line)[1:], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (line, result.output)
        if " check " in f"{line} ":
            assert "ready: bash scripts/train.sh" in result.stdout
    assert answers_of(workdir / "again")["budget"] == answers_of(workdir / "gpt")["budget"] == "$100"
    assert not (workdir / "peek").exists()
