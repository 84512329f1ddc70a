"""copier.yml, the one declarative list of questions: it agrees with the code it names, and its
validators hold both at llmgen's prompts and inside Copier itself."""

from __future__ import annotations

import keyword

import copier
import pytest

from generator.errors import AnswerError
from generator.estimate.formulas import STRATEGIES
from generator.plan import plan_run
from generator.questions import ASKED, FLAGS, load_questions, validate
from generator.resources import templates_dir
from generator.tracks import load_tracks
from reference_llm.model import PRESETS


def test_choices_match_the_code_they_name():
    q = load_questions()
    assert list(q["model_preset"].choices) == list(PRESETS)
    assert list(q["track"].choices) == list(load_tracks())
    assert set(q["parallelism"].choices) == set(STRATEGIES)  # "auto" is resolved before Copier sees it


def test_every_asked_question_has_a_flag_and_help():
    q = load_questions()
    for name in ASKED:
        assert q[name].help and FLAGS[name].startswith("--")


def test_copier_defaults_are_the_yes_answers(fixed_cpu):
    """Running Copier alone with --defaults renders what `llmgen new --yes` renders, except the answers
    llmgen derives from the estimate (tokens, max_steps, roadmap) and the name."""
    yes = plan_run("demo", {"track": "beginner", "budget": "laptop", "hardware": "cpu", "parallelism": "auto",
                            "model_preset": "demo", "exercises": True}).answers
    q = load_questions()
    for name, question in q.items():
        if name in ("project_name", "tokens", "max_steps", "roadmap"):
            continue
        assert question.default_for(yes) == yes[name], name


@pytest.mark.parametrize("name", ["../x", "a/b", "{{ 7*7 }}", "", "1abc", "-x", "my project", "x.y", "é",
                                  "a" * 65, "torch", "reference_llm", "tests", "json", "os", "site"]
                         + keyword.kwlist)
def test_bad_project_names(name):
    with pytest.raises(AnswerError) as err:
        validate(load_questions()["project_name"], name, {})
    assert str(err.value).startswith(f"project name {name!r} ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["demo", "my-llm", "My_LLM2", "match", "type", "a"])
def test_good_project_names(name):
    assert validate(load_questions()["project_name"], name, {}) == name


def test_copier_itself_enforces_the_validators(tmp_path):
    """The validators are Copier's, not only llmgen's: a direct run_copy refuses a bad answer and
    leaves no destination behind."""
    destination = tmp_path / "out"
    with pytest.raises(ValueError, match="project_name"):
        copier.run_copy(str(templates_dir()), destination, data={"project_name": "../x", "tokens": 1, "max_steps": 1},
                        defaults=True, unsafe=False, quiet=True)
    with pytest.raises(ValueError, match="parallelism"):
        copier.run_copy(str(templates_dir()), destination,
                        data={"project_name": "ok", "parallelism": "zero3", "tokens": 1, "max_steps": 1},
                        defaults=True, unsafe=False, quiet=True)
    assert not destination.exists()


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
