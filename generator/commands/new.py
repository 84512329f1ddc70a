"""`llmgen new NAME`: ask (or take from flags, an answers file or --yes) the questions of copier.yml,
show the estimate for the run they describe, then render the template into NAME/.

Answers are resolved per question in this order: the flag, then --answers FILE, then (with --yes) the
track's default, then a prompt. Every answer is validated where it is given: a prompt on a terminal asks
again; anything else (flags, files, piped answers) fails at once with exit code 2 and nothing written.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from generator.errors import AnswerError, LLMGenError
from generator.estimate import parse_budget, parse_count, parse_hardware
from generator.estimate.api import AUTO, PARALLELISMS
from generator.estimate.precision import canonical_precision
from generator.plan import RunPlan, plan_run
from generator.questions import ASKED, FLAGS, Question, load_questions, validate
from generator.render import check_target, preview_files, render_project
from generator.tracks import Track, load_tracks
from generator.units import duration, si
from reference_llm.config import Dtype

# Answers a person may give (flags or --answers); the others are derived from these and the name.
GIVEN = (*ASKED, "exercises", "micro_batch", "grad_accum", "precision", "tokens")


def new(
    name: Annotated[str, typer.Argument(help="Project name: its directory and, with - as _, its Python package.",
                                        show_default=False)],
    directory: Annotated[Path | None, typer.Option("--dir", help="Directory to create (default: ./NAME).",
                                                      show_default=False)] = None,
    track: Annotated[str | None, typer.Option(help="beginner | practitioner | researcher.")] = None,
    budget: Annotated[str | None, typer.Option(help="$500 | 200 gpu-hours | 8xH100 for 3 days | laptop.")] = None,
    hardware: Annotated[str | None, typer.Option(help="cpu | 1xRTX4090 | 8xH100 | 4x8xH100 (nodes x GPUs).")] = None,
    parallelism: Annotated[str | None, typer.Option(help=f"{' | '.join(PARALLELISMS)}.")] = None,
    model_preset: Annotated[str | None, typer.Option("--model-preset", help="A reference_llm preset, e.g. demo, "
                                                        "gpt2-124m, llama-1b.")] = None,
    exercises: Annotated[bool | None, typer.Option("--exercises/--no-exercises", show_default=False,
                                                      help="Learner stubs to fill in (default: the track's).")] = None,
    micro_batch: Annotated[int | None, typer.Option("--micro-batch", help="Sequences per device per pass "
                                                       "(default: 8 on CPU, the largest that fits on GPUs).")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", help="Micro-batches per step (default: 1 "
                                                      "on CPU, about 0.5M tokens per step on GPUs).")] = None,
    precision: Annotated[str | None, typer.Option(help=f"{' | '.join(Dtype)} (default auto: bfloat16 "
                                                     "where the device computes it natively).")] = None,
    tokens: Annotated[str | None, typer.Option(help="Training tokens, e.g. 2B (default: from the budget, at "
                                                  "most 20 per parameter).")] = None,
    answers_file: Annotated[Path | None, typer.Option("--answers", help="Replay an answers file, e.g. another "
                                                         "project's .copier-answers.yml.", show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Take the track's defaults for every unanswered "
                                      "question (beginner, laptop CPU, demo model).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the answers and the files, write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty directory.")] = False,
    git: Annotated[bool, typer.Option("--git/--no-git", help="git init and a first commit.")] = True,
) -> None:
    """Generate a project that trains, samples and tests a language model from scratch."""
    questions = load_questions()
    validate(questions["project_name"], name, {})
    target = directory if directory is not None else Path(name)
    check_target(target, force)

    flags = {"track": track, "budget": budget, "hardware": hardware, "parallelism": parallelism,
             "model_preset": model_preset, "exercises": exercises, "micro_batch": micro_batch,
             "grad_accum": grad_accum, "precision": precision, "tokens": tokens}
    replay = read_answers_file(answers_file, questions) if answers_file is not None else {}
    given = gather(questions, flags, replay, yes, Prompter())
    plan = plan_run(name, given)

    out = Console(highlight=False)
    out.print(estimate_panel(plan))
    if dry_run:
        out.print("[bold]Answers[/bold] (.copier-answers.yml)")
        shown = {k: v for k, v in plan.answers.items() if k != "roadmap"}
        out.print(yaml.safe_dump(shown, sort_keys=False).rstrip(), markup=False)
        out.print(f"roadmap: {len(plan.answers['roadmap']['steps'])} steps with their estimates (ROADMAP.md)",
                  markup=False)
        out.print(f"[bold]Files[/bold] it would write in {target}/ (dry run: nothing written)")
        for path in preview_files(plan.answers):
            out.print(f"  {path}", markup=False)
        return
    files = render_project(plan.answers, target, force=force, git=git)
    print_next_steps(out, target, files, git)


def register(app: typer.Typer) -> None:
    app.command("new")(new)


# ----------------------------------------------------------------------------------------------------
# Gathering answers
# ----------------------------------------------------------------------------------------------------


def gather(questions: dict[str, Question], flags: dict[str, Any], replay: dict[str, Any], yes: bool,
           prompter: Prompter) -> dict[str, Any]:
    """The given answers (see GIVEN), each validated; asks for what flags, file and --yes leave open."""
    tracks = load_tracks()
    given: dict[str, Any] = {}
    context: dict[str, Any] = {}  # what later checks need from earlier answers (the parallelism validator's)

    def accept(name: str, value: Any) -> None:
        given[name] = check_given(name, value, questions, tracks, context)

    def supplied(name: str) -> Any:
        return flags[name] if flags.get(name) is not None else replay.get(name)

    for name in ASKED:
        value = supplied(name)
        if value is not None:
            accept(name, value)
            continue
        first = next(iter(tracks))  # the first track (beginner) is the default track
        default = first if name == "track" else getattr(tracks[given.get("track", first)].defaults, name)
        if yes:
            accept(name, default)
            continue
        missing = [FLAGS[n] for n in ASKED if n not in given and supplied(n) is None]
        check = functools.partial(check_given, name, questions=questions, tracks=tracks, context=context)
        given[name] = prompter.ask(questions[name], default, check, missing)

    track = tracks[given["track"]]
    for name in GIVEN[len(ASKED):]:
        value = supplied(name)
        if value is not None:
            accept(name, value)
        elif name == "exercises":
            given[name] = track.defaults.exercises
    return given


def check_given(name: str, value: Any, questions: dict[str, Question], tracks: dict[str, Track],
                context: dict[str, Any]) -> Any:
    """One given answer, parsed and validated; raises AnswerError naming its flag."""
    flag = FLAGS[name]
    if name == "tokens":  # counts like 2B or 1.5e9, not only integers
        return parse_count(value, flag)
    if isinstance(value, str) and questions[name].type != "str":
        value = questions[name].parse(value)
    if name == "track":
        if value not in tracks:
            raise AnswerError(f"--track must be one of {', '.join(tracks)}; got {value!r}")
    elif name == "budget":
        context["budget_in_dollars"] = parse_budget(str(value)).kind == "usd"
    elif name == "hardware":
        hw = parse_hardware(str(value))
        if hw.is_cpu and context.get("budget_in_dollars"):  # caught here, not after the last question
            raise AnswerError("--hardware cpu has no hourly price, so a budget in dollars buys nothing on it; "
                              "give a GPU, or a time budget such as 'laptop' or 'cpu for 2 hours'")
        context.update(gpu=hw.gpu.name, nodes=hw.nodes, gpus_per_node=hw.gpus_per_node)
    elif name == "parallelism":
        if value not in PARALLELISMS:
            raise AnswerError(f"--parallelism must be one of {', '.join(PARALLELISMS)}; got {value!r}")
        if value != AUTO:
            validate(questions["parallelism"], value, context)
    elif name == "precision":
        value = canonical_precision(str(value))
        if value not in questions["precision"].choices:
            raise AnswerError(f"--precision must be one of {', '.join(questions['precision'].choices)}; got {value!r}")
    else:  # model_preset, exercises, micro_batch, grad_accum: copier.yml's type, choices and validator
        validate(questions[name], value, context)
    return value


def read_answers_file(path: Path, questions: dict[str, Question]) -> dict[str, Any]:
    """The given answers in a YAML answers file. Keys starting with _ (Copier's own) and derived answers
    are ignored; unknown keys are an error."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AnswerError(f"--answers {path}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise AnswerError(f"--answers {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise AnswerError(f"--answers {path}: must be a mapping of question: answer")
    unknown = sorted(str(k) for k in data if not str(k).startswith("_") and k not in questions)
    if unknown:
        raise AnswerError(f"--answers {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(questions)}")
    return {k: v for k, v in data.items() if k in GIVEN and v is not None}


class Prompter:
    """Asks one question on stderr and reads the answer from stdin.

    On a terminal a bad answer is explained and asked again. Without one (piped input), a bad answer
    is an error, and end of input names every flag still missing, so scripts fail at once.
    """

    def __init__(self) -> None:
        self.console = Console(stderr=True, highlight=False)

    def ask(self, question: Question, default: Any, check: Callable[[str], Any], missing: list[str]) -> Any:
        choices = f" ({' | '.join(map(str, self.choices(question)))})" if self.choices(question) else ""
        self.console.print(f"[dim]{escape(question.help)}[/dim]")
        while True:
            self.console.print(f"[bold]{question.name}[/bold]{escape(choices)} {escape(f'[{default}]')}: ", end="")
            line = sys.stdin.readline()
            if not sys.stdin.isatty():  # piped: show the answer, as a terminal would have echoed it
                self.console.print(line.rstrip("\n"), markup=False)
            if not line:
                raise AnswerError(f"no answer for {', '.join(missing)} (input ended); pass "
                                  f"{'them' if len(missing) > 1 else 'it'} as flags, or --yes for the defaults")
            text = line.strip() or str(default)
            try:
                return check(text)
            except LLMGenError as exc:  # AnswerError, or the estimator's EstimateError
                if not sys.stdin.isatty():
                    raise
                self.console.print(f"[red]{escape(str(exc))}[/red]")

    @staticmethod
    def choices(question: Question) -> tuple[Any, ...]:
        return PARALLELISMS if question.name == "parallelism" else question.choices


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------


def estimate_panel(plan: RunPlan) -> Panel:
    est, a = plan.estimate, plan.answers
    devices = a["nodes"] * a["gpus_per_node"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("model", f"{a['model_preset']}: {si(est.params)} parameters, context {est.seq_len}")
    grid.add_row("tokens", f"{si(a['tokens'])} ({plan.tokens_note})")
    grid.add_row("hardware", f"{a['hardware']}: {devices} device{'s' if devices > 1 else ''}")
    grid.add_row("parallelism", plan.parallelism_reason)
    per_step = a["micro_batch"] * a["grad_accum"] * est.seq_len * devices
    grid.add_row("batch", f"{a['micro_batch']} x {a['grad_accum']} accumulation x {devices} device"
                          f"{'s' if devices > 1 else ''} = {si(per_step)} tokens per step, {a['max_steps']:,} steps")
    grid.add_row("compute", f"{est.flops_total:.3g} FLOPs at MFU {est.mfu:.2f} of {est.peak_tflops:g} TFLOP/s "
                            f"({est.precision})")
    grid.add_row("GPU-hours", f"{est.gpu_hours:,.3g}" + (" (CPU-hours)" if plan.hardware.is_cpu else ""))
    grid.add_row("wall time", duration(est.wall_hours))
    grid.add_row("cost", f"${est.cost_usd:,.2f}" + (" (your own machine)" if plan.hardware.is_cpu else
                                                    f" at ${est.price_per_gpu_hour:.2f} per GPU-hour"))
    verdict = "[green]fits[/green]" if est.fits else "[red]does NOT fit[/red]"
    grid.add_row("memory", f"{est.memory_per_gpu_gib:.2f} GiB per device of {est.memory_usable_gib:.1f} usable: "
                           f"{verdict}")
    for tip in est.suggestions[:3]:
        grid.add_row("", f"to fit: {tip}")
    return Panel(grid, title=f"Estimate for {a['project_name']} ({a['track']} track)", title_align="left")


def print_next_steps(out: Console, target: Path, files: list[str], git: bool) -> None:
    out.print(f"Created [bold]{target}[/bold]/ with {len(files)} files"
              + (" and a first git commit." if git else "."))
    out.print("Next steps (install llmgen from its own repository into this environment, not from PyPI):")
    for command, why in ((f"cd {target}", ""), ("pip install -e .", "this project, in the environment with llmgen"),
                         ("make demo", "train briefly, then sample"), ("make test", "the checkpoint tests")):
        out.print(f"  {command:<20}" + (f"[dim]# {why}[/dim]" if why else ""))
