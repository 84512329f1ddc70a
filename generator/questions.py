"""The questions of `llmgen new`, read from the template's copier.yml.

copier.yml is the single declarative source: each question's type, help, choices, default and Jinja
validator. `llmgen new` evaluates the same validators at its prompts (so a bad answer is refused when it
is typed, not after the last question), and Copier evaluates them again when it renders. A few checks
need Python and live here: the project name must not shadow a standard-library module.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from generator.errors import AnswerError
from generator.resources import templates_dir

# The questions `llmgen new` prompts for, in order; every other answer has a flag or is derived.
ASKED = ("track", "budget", "hardware", "parallelism", "model_preset")

# How a user names each answer: the flag (or argument) of `llmgen new`.
FLAGS = {
    "project_name": "NAME", "track": "--track", "budget": "--budget", "hardware": "--hardware",
    "parallelism": "--parallelism", "model_preset": "--model-preset", "exercises": "--exercises",
    "micro_batch": "--micro-batch", "grad_accum": "--grad-accum", "precision": "--precision",
    "tokens": "--tokens",
}

_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}
_KIND = {"str": "a string", "int": "an integer", "float": "a number", "bool": "yes or no", "yaml": "YAML data"}
_TRUE, _FALSE = ("y", "yes", "true", "1", "on"), ("n", "no", "false", "0", "off")


@dataclass(frozen=True)
class Question:
    name: str
    type: str  # str | int | float | bool | yaml (structured data computed by llmgen)
    help: str
    choices: tuple[Any, ...]
    default: Any  # may be a Jinja template over earlier answers; None when the question has none
    validator: str  # Jinja template: renders to an error message, or to nothing when the answer is valid

    @property
    def flag(self) -> str:
        return FLAGS.get(self.name, self.name)

    def parse(self, text: str) -> Any:
        """A typed answer from what a user typed; raises AnswerError naming the flag."""
        text = text.strip()
        try:
            if self.type == "bool":
                if text.lower() in _TRUE:
                    return True
                if text.lower() in _FALSE:
                    return False
                raise ValueError
            return _TYPES[self.type](text)
        except ValueError:
            raise AnswerError(f"{self.flag} must be {_KIND[self.type]}; got {text!r}") from None

    def check(self, value: Any, answers: dict[str, Any]) -> str | None:
        """Why `value` is not a valid answer given the earlier `answers`, or None when it is."""
        if not _has_type(value, self.type):
            return f"must be {_KIND[self.type]}; got {value!r}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}; got {value!r}"
        if not self.validator:
            return None
        try:
            message = _jinja().from_string(self.validator).render({**answers, self.name: value}).strip()
        except TemplateError as exc:  # a validator that refers to an answer not given yet, or a template bug
            return f"cannot be checked ({exc})"
        return message or None

    def default_for(self, answers: dict[str, Any]) -> Any:
        """The default, with any Jinja in it rendered over the earlier `answers`."""
        if isinstance(self.default, str) and "{{" in self.default:
            return self.parse(_jinja().from_string(self.default).render(answers))
        return self.default


def _has_type(value: Any, type_name: str) -> bool:
    if type_name == "yaml":  # any structure
        return True
    if isinstance(value, bool):  # a bool is an int to Python, but not an answer to an int question
        return type_name == "bool"
    return isinstance(value, _TYPES[type_name]) or (type_name == "float" and isinstance(value, int))


def validate(question: Question, value: Any, answers: dict[str, Any]) -> Any:
    """`value` if it is valid (with the Python-only checks), else AnswerError naming the flag."""
    problem = question.check(value, answers)
    if question.name == "project_name":
        problem = problem or _shadowed_module(value)
        if problem:  # the validator's messages read as a sentence about the name
            raise AnswerError(f"project name {value!r} {problem}")
    elif problem:
        raise AnswerError(f"{question.flag}: {problem}")
    return value


def _shadowed_module(project_name: str) -> str | None:
    package = project_name.replace("-", "_")
    if package in sys.stdlib_module_names:
        return f"would shadow the standard-library module {package}; choose another name"
    return None


@functools.cache
def load_questions(template: Path | None = None) -> dict[str, Question]:
    """copier.yml's questions (keys not starting with _), in file order."""
    path = (template or templates_dir()) / "copier.yml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    questions = {}
    for name, spec in raw.items():
        if name.startswith("_"):
            continue
        questions[name] = Question(
            name=name, type=spec.get("type", "str"), help=spec.get("help", ""),
            choices=tuple(spec.get("choices", ())), default=spec.get("default"),
            validator=spec.get("validator", ""),
        )
    return questions


@functools.cache
def _jinja() -> SandboxedEnvironment:
    # Sandboxed, like Copier's own environment: a validator can compute but never reach Python objects.
    return SandboxedEnvironment(autoescape=False)
