"""copier.yml, the one declarative list of questions: it agrees with the code it names, and its
validators hold both at llmgen's prompts and inside Copier itself."""

from __future__ import annotations

import json
import keyword

import copier
import pytest
import yaml

from generator.commands.new import Prompter
from generator.errors import AnswerError
from generator.estimate.api import PARALLELISMS
from generator.plan import plan_run
from generator.questions import ASKED, FLAGS, load_questions, validate
from generator.resources import templates_dir
from generator.roadmap import compact_roadmap
from generator.tracks import load_tracks
from reference_llm.config import CHOICES, Dtype, Strategy, load_config
from reference_llm.distributed import ds_config
from reference_llm.model import PRESETS


def test_choices_match_the_code_they_name():
    q = load_questions()
    assert list(q["model_preset"].choices) == list(PRESETS)
    assert list(q["track"].choices) == list(load_tracks())


def test_strategy_and_precision_choices_are_reference_llms_vocabulary():
    """copier.yml lists the strategies and precisions that reference_llm.config declares, in its order and
    spelling; `llmgen new` offers the same, plus "auto" parallelism, which it resolves before Copier runs."""
    raw = yaml.safe_load((templates_dir() / "copier.yml").read_text(encoding="utf-8"))
    assert raw["parallelism"]["choices"] == list(Strategy) == list(CHOICES["distributed.strategy"])
    assert raw["precision"]["choices"] == list(Dtype) == list(CHOICES["train.dtype"])
    q = load_questions()
    assert Prompter.choices(q["parallelism"]) == PARALLELISMS == ("auto", *Strategy)
    assert Prompter.choices(q["precision"]) == tuple(Dtype)


def test_every_asked_question_has_a_flag_and_help():
    q = load_questions()
    for name in ASKED:
        assert q[name].help and FLAGS[name].startswith("--")


def test_copier_defaults_are_the_yes_answers(fixed_cpu):
    """Running Copier alone with --defaults renders what `llmgen new --yes` renders, except the answers
    llmgen derives from the estimate (tokens, max_steps, roadmap) and the name."""
    yes = plan_run(
        "demo",
        {
            "track": "beginner",
            "budget": "laptop",
            "hardware": "cpu",
            "parallelism": "auto",
            "model_preset": "demo",
            "exercises": True,
        },
    ).answers
    q = load_questions()
    planned = [name for name, question in q.items() if question.default is None]  # no default on purpose
    assert set(planned) == {
        "project_name",
        "tokens",
        "max_steps",
        "warmup_steps",
        "min_lr",
        "eval_interval",
        "checkpoint_interval",
        "roadmap",
    }
    for name, question in q.items():
        if name not in planned:  # (deepspeed: {} on cpu, its default)
            assert question.default_for(yes) == yes[name], name


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "a/b",
        "{{ 7*7 }}",
        "",
        "1abc",
        "-x",
        "my project",
        "x.y",
        "é",
        "a" * 65,
        "torch",
        "reference_llm",
        "tests",
        "json",
        "os",
        "site",
    ]
    + keyword.kwlist,
)
def test_bad_project_names(name):
    with pytest.raises(AnswerError) as err:
        validate(load_questions()["project_name"], name, {})
    assert str(err.value).startswith(f"project name {name!r} ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("test", "would shadow the standard-library module test;"),  # not in sys.stdlib_module_names
        ("Json", "would shadow the standard-library module json (names that differ only in case"),
        ("fastapi", "would shadow the installed module fastapi;"),
        ("Scipy", "would shadow the installed module scipy (names that differ only in case"),
        ("pyyaml", "is the name of the installed distribution PyYAML"),  # imported as yaml, installed as PyYAML
        ("CON", "is a device name Windows reserves (CON)"),
        ("nul", "is a device name Windows reserves (NUL)"),
        ("COM1", "is a device name Windows reserves (COM1)"),
        ("Lpt9", "is a device name Windows reserves (LPT9)"),
    ],
)
def test_names_that_would_shadow_or_cannot_exist_are_refused_with_the_reason(name, reason):
    with pytest.raises(AnswerError) as err:
        validate(load_questions()["project_name"], name, {})
    assert str(err.value).startswith(f"project name {name!r} {reason}"), str(err.value)
    assert str(err.value).endswith("choose another name")


def test_installed_means_installed_not_a_folder_here(tmp_path, monkeypatch):
    """A folder of the same name in the current directory (say, the project being regenerated) is not an
    installed module; a name nothing installs passes (the control for the fastapi case above)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "__init__.py").write_text("")
    assert validate(load_questions()["project_name"], "proj", {}) == "proj"
    assert validate(load_questions()["project_name"], "fastapi-clone", {}) == "fastapi-clone"


@pytest.mark.parametrize("name", ["demo", "my-llm", "My_LLM2", "match", "type", "a", "console", "com10"])
def test_good_project_names(name):
    assert validate(load_questions()["project_name"], name, {}) == name


def test_copier_itself_enforces_the_validators(tmp_path):
    """The validators are Copier's, not only llmgen's: a direct run_copy refuses a bad answer and
    leaves no destination behind."""
    destination = tmp_path / "out"
    with pytest.raises(ValueError, match="project_name"):
        copier.run_copy(
            str(templates_dir()),
            destination,
            data={"project_name": "../x", "tokens": 1, "max_steps": 1},
            defaults=True,
            unsafe=False,
            quiet=True,
        )
    with pytest.raises(ValueError, match="parallelism"):
        copier.run_copy(
            str(templates_dir()),
            destination,
            data={"project_name": "ok", "parallelism": "zero3", "tokens": 1, "max_steps": 1},
            defaults=True,
            unsafe=False,
            quiet=True,
        )
    assert not destination.exists()


def test_copier_writes_deepspeed_json_as_ds_config_builds_it(tmp_path, fixed_cpu):
    """configs/deepspeed.json is the `deepspeed` answer, which llmgen computes with ds_config.build; plain
    Copier renders it from that answer and refuses a ZeRO project without one (or another with one)."""
    answers = plan_run(
        "ds",
        {
            "track": "practitioner",
            "budget": "200 gpu-hours",
            "hardware": "8xH100",
            "parallelism": "zero2",
            "model_preset": "gpt2-124m",
            "exercises": False,
            "tokens": 10**9,
        },
    ).answers
    answers["roadmap"] = compact_roadmap(answers["roadmap"])  # Copier's form of it, as render_into passes it
    copier.run_copy(str(templates_dir()), tmp_path / "ok", data=answers, defaults=True, unsafe=False, quiet=True)
    written = json.loads((tmp_path / "ok" / "configs" / "deepspeed.json").read_text())
    assert written == ds_config.build(load_config(tmp_path / "ok" / "configs" / "train.toml"), 8, bf16=True)
    for wrong in ({"deepspeed": {}}, {"parallelism": "ddp"}):
        with pytest.raises(ValueError, match="deepspeed"):
            copier.run_copy(
                str(templates_dir()),
                tmp_path / "bad",
                data={**answers, **wrong},
                defaults=True,
                unsafe=False,
                quiet=True,
            )
    assert not (tmp_path / "bad").exists()


def test_parallelism_rules():
    q = load_questions()["parallelism"]
    cpu = {"gpu": "cpu", "nodes": 1, "gpus_per_node": 1}
    one_gpu = {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 1}
    node = {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8}
    assert q.check("single", cpu) is None
    for strategy in ("ddp", "fsdp", "zero1", "zero2", "zero3"):
        assert "on cpu" in q.check(strategy, cpu)
    assert "one GPU" in q.check("ddp", one_gpu)
    assert q.check("zero3", one_gpu) is None  # ZeRO-Offload on one GPU is a real use
    assert "8 GPUs" in q.check("single", node)
    assert all(q.check(s, node) is None for s in ("ddp", "fsdp", "zero1", "zero2", "zero3"))


def test_tp_pp_rules():
    """copier.yml's tp/pp validators hold what needs no model (the model's heads and layers are
    reference_llm.config.check_parallel_layout's, which llmgen applies before Copier runs)."""
    q = load_questions()
    node = {"gpu": "H100-SXM", "nodes": 1, "gpus_per_node": 8, "parallelism": "fsdp", "tp": 1}
    assert q["tp"].check(2, node) is None and q["pp"].check(8, node) is None
    assert "fsdp only" in q["tp"].check(2, {**node, "parallelism": "ddp"})
    assert "must divide the 8 GPUs" in q["tp"].check(3, node)
    assert "at least 1" in q["tp"].check(0, node)
    assert "fsdp only" in q["pp"].check(2, {**node, "parallelism": "zero3"})
    assert "use pp or tp alone" in q["pp"].check(4, {**node, "tp": 2})
    assert "must equal the 8 devices" in q["pp"].check(2, node)
