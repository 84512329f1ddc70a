"""The questions of `llmgen new`, read from the template's copier.yml.

copier.yml is the single declarative source: each question's type, help, choices, default and Jinja
validator. `llmgen new` evaluates the same validators at its prompts (so a bad answer is refused when it
is typed, not after the last question), and Copier evaluates them again when it renders. A few checks
need Python and live here (`_name_problem`): the project name must not shadow a standard-library module
or an installed distribution, nor be a name Windows reserves, in any case (a project made on Linux is
also checked out on macOS and Windows, whose file systems ignore case).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from jinja2 import Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from generator.errors import AnswerError
from generator.resources import templates_dir

T = TypeVar("T")

# The questions `llmgen new` prompts for, in order; every other answer has a flag or is derived.
ASKED = ("track", "budget", "hardware", "parallelism", "model_preset", "tp", "pp")
# tp and pp are prompted only on these tracks, and only where more than one layout runs (several GPUs,
# parallelism auto or fsdp); elsewhere they are 1 unless --tp/--pp say otherwise, so the other tracks'
# questions stay the five they were.
LAYOUT_TRACKS = ("researcher",)

# How a user names each answer: the flag (or argument) of `llmgen new`.
FLAGS = {
    "project_name": "NAME",
    "track": "--track",
    "budget": "--budget",
    "hardware": "--hardware",
    "parallelism": "--parallelism",
    "model_preset": "--model",
    "tp": "--tp",
    "pp": "--pp",
    "exercises": "--exercises",
    "micro_batch": "--micro-batch",
    "grad_accum": "--grad-accum",
    "precision": "--precision",
    "tokens": "--tokens",
}

# Old spellings that every command still accepts, with a deprecation line on stderr: old -> new.
DEPRECATED_FLAGS = {"--model-preset": "--model", "--path": "--dir"}
DIR_HELP = "The project folder"  # every command names it --dir


def deprecated(old: str, old_value: T | None, new_value: T | None) -> T | None:
    """The value of a flag given under its new name or its deprecated `old` one (see DEPRECATED_FLAGS),
    which prints a deprecation line on stderr; both at once is an error."""
    new = DEPRECATED_FLAGS[old]
    if old_value is None:
        return new_value
    if new_value is not None:
        raise AnswerError(f"{old} and {new} are the same flag ({old} is its old name); give only {new}")
    print(f"warning: {old} is deprecated; use {new}", file=sys.stderr)
    return old_value


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
            message = _template(self.validator).render({**answers, self.name: value}).strip()
        except TemplateError as exc:  # a validator that refers to an answer not given yet, or a template bug
            return f"cannot be checked ({exc})"
        return message or None

    def default_for(self, answers: dict[str, Any]) -> Any:
        """The default, with any Jinja in it rendered over the earlier `answers`."""
        if isinstance(self.default, str) and "{{" in self.default:
            return self.parse(_template(self.default).render(answers))
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
        problem = problem or _name_problem(value)
        if problem:  # the validator's messages read as a sentence about the name
            raise AnswerError(f"project name {value!r} {problem}")
    elif problem:
        raise AnswerError(f"{question.flag}: {problem}")
    return value


# Names Windows reserves for devices, in any case and with any extension (Microsoft, "Naming Files, Paths,
# and Namespaces"): a folder or module with one of them cannot be created or checked out there.
_WINDOWS_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])", re.IGNORECASE)
# Standard-library packages that sys.stdlib_module_names leaves out (it excludes the test suite).
_STDLIB_EXTRA = ("test",)


def _name_problem(project_name: str) -> str | None:
    """Why a project name that passed copier.yml's validator would still break something, or None."""
    package = project_name.replace("-", "_")
    if _WINDOWS_RESERVED.fullmatch(package):
        return (
            f"is a device name Windows reserves ({package.upper()}), so its folder cannot exist there; "
            "choose another name"
        )
    lower = package.lower()
    case = " (names that differ only in case clash on macOS and Windows)"
    stdlib = {name.lower(): name for name in (*sys.stdlib_module_names, *_STDLIB_EXTRA)}
    if lower in stdlib:
        return (
            f"would shadow the standard-library module {stdlib[lower]}"
            f"{case if stdlib[lower] != package else ''}; choose another name"
        )
    for module in dict.fromkeys((package, lower)):
        if _installed(module):
            return f"would shadow the installed module {module}{case if module != package else ''}; choose another name"
    try:
        dist = importlib.metadata.distribution(project_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return (
        f"is the name of the installed distribution {dist.metadata['Name']}: installing the project would "
        "replace it; choose another name"
    )


def _installed(module: str) -> bool:
    """Whether Python imports `module` from somewhere other than the current directory (where the
    project itself, or an unrelated folder of the same name, may be)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if spec.origin is not None and not spec.has_location:
        return True  # built-in and frozen modules
    here = Path.cwd().resolve()
    places = (
        [Path(spec.origin).parent]
        if spec.origin and spec.has_location
        else [Path(p) for p in spec.submodule_search_locations or ()]
    )
    if spec.origin and Path(spec.origin).name == "__init__.py":
        places = [Path(spec.origin).parent]  # a package: the folder it is
    return any((place if place.name == module else place / module).resolve().parent != here for place in places)


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
            name=name,
            type=spec.get("type", "str"),
            help=spec.get("help", ""),
            choices=tuple(spec.get("choices", ())),
            default=spec.get("default"),
            validator=spec.get("validator", ""),
        )
    return questions


@functools.cache
def _jinja() -> SandboxedEnvironment:
    # Sandboxed, like Copier's own environment: a validator can compute but never reach Python objects.
    return SandboxedEnvironment(autoescape=False)


@functools.cache
def _template(source: str) -> Template:
    """A validator or default compiled once: `llmgen new` checks each answer at every prompt and plan."""
    return _jinja().from_string(source)
