"""`llmgen new NAME`: ask (or take from flags, an answers file or --yes) the questions of copier.yml,
show the plan for the run they describe, confirm it when it carries a warning, then render the template
into NAME/.

Answers are resolved per question in this order: the flag, then --answers FILE, then (with --yes) the
default, then a prompt. Budget and hardware agree (`generator.plan.agree`): a budget that names hardware
sets it and is not asked again, and each default follows the answers before it; tp and pp are asked
on the researcher track where more than one layout runs, offering only the values reference_llm runs
(`generator.plan.layout_choices`). At a prompt, `back`
returns to the previous prompted question. Every answer is validated where it is given: a prompt on a
terminal asks again; anything else (flags, files, piped answers) fails at once with exit code 2 and
nothing written.
"""

from __future__ import annotations

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
from generator.estimate.invariants import batch_bounds, epochs_text
from generator.estimate.precision import canonical_precision
from generator.plan import (
    RunPlan,
    agree,
    check_agreement,
    check_layout,
    check_parallelism,
    layout_choices,
    plan_run,
)
from generator.questions import (
    ASKED,
    DIR_HELP,
    FLAGS,
    LAYOUT_TRACKS,
    Question,
    deprecated,
    load_questions,
    validate,
)
from generator.render import check_target, preview_files, render_project
from generator.tracks import Track, load_tracks
from generator.units import duration, si
from generator.yaml_files import read_yaml
from reference_llm.config import Dtype, Strategy
from reference_llm.model.config import ModelConfig

# Answers a person may give (flags or --answers); the others are derived from these and the name.
GIVEN = (*ASKED, "exercises", "micro_batch", "grad_accum", "precision", "tokens")
BACK = ("back", "<")  # typed at a prompt: return to the previous prompted question


def new(
    name: Annotated[
        str,
        typer.Argument(help="Project name: its directory and, with - as _, its Python package.", show_default=False),
    ],
    directory: Annotated[
        Path | None, typer.Option("--dir", help=f"{DIR_HELP} to create (default: ./NAME).", show_default=False)
    ] = None,
    track: Annotated[str | None, typer.Option(help="beginner | practitioner | researcher.")] = None,
    budget: Annotated[str | None, typer.Option(help="$500 | 200 gpu-hours | 8xH100 for 3 days | laptop.")] = None,
    hardware: Annotated[str | None, typer.Option(help="cpu | 1xRTX4090 | 8xH100 | 4x8xH100 (nodes x GPUs).")] = None,
    parallelism: Annotated[str | None, typer.Option(help=f"{' | '.join(PARALLELISMS)}.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="A reference_llm preset, e.g. demo, gpt2-124m, llama-1b.")
    ] = None,
    model_preset: Annotated[str | None, typer.Option("--model-preset", hidden=True)] = None,
    tp: Annotated[
        int | None,
        typer.Option(
            "--tp",
            help="Tensor-parallel degree (distributed.tp): each block split over this many GPUs of a node; fsdp only "
            "(default 1; asked on the researcher track where several values run).",
        ),
    ] = None,
    pp: Annotated[
        int | None,
        typer.Option(
            "--pp",
            help="Pipeline stages (distributed.pp): the blocks split over this many GPUs; fsdp only, without --tp "
            "(default 1).",
        ),
    ] = None,
    exercises: Annotated[
        bool | None,
        typer.Option(
            "--exercises/--no-exercises", show_default=False, help="Learner stubs to fill in (default: the track's)."
        ),
    ] = None,
    micro_batch: Annotated[
        int | None,
        typer.Option(
            "--micro-batch", help="Sequences per device per pass (default: what the batch needs, at most what fits)."
        ),
    ] = None,
    grad_accum: Annotated[
        int | None,
        typer.Option(
            "--grad-accum", help="Micro-batches per step (default: the rest of the batch, DeepSeek LLM's B_opt)."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help=f"{' | '.join(Dtype)} (default auto: bfloat16 where the device computes it natively)."),
    ] = None,
    tokens: Annotated[
        str | None,
        typer.Option(
            help="Training tokens, e.g. 2B (default: what the budget buys, at "
            "most 20 per parameter and 4 epochs of the corpus)."
        ),
    ] = None,
    answers_file: Annotated[
        Path | None,
        typer.Option(
            "--answers", help="Replay an answers file, e.g. another project's .copier-answers.yml.", show_default=False
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Take the defaults for every unanswered question and "
            "render a plan with warnings (printed on stderr) without asking.",
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the answers and the files, write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty directory.")] = False,
    git: Annotated[bool, typer.Option("--git/--no-git", help="git init and a first commit.")] = True,
) -> None:
    """Generate a project that trains, samples and tests a language model from scratch."""
    model = deprecated("--model-preset", model_preset, model)
    questions = load_questions()
    validate(questions["project_name"], name, {})
    target = directory if directory is not None else Path(name)
    check_target(target, force)

    flags = {
        "track": track,
        "budget": budget,
        "hardware": hardware,
        "parallelism": parallelism,
        "model_preset": model,
        "tp": tp,
        "pp": pp,
        "exercises": exercises,
        "micro_batch": micro_batch,
        "grad_accum": grad_accum,
        "precision": precision,
        "tokens": tokens,
    }
    replay = read_answers_file(answers_file, questions) if answers_file is not None else {}
    prompter = Prompter()
    given, notes = gather(questions, flags, replay, yes, prompter)
    plan = plan_run(name, given)
    plan.notes[:0] = notes

    out = Console(highlight=False)
    out.print(estimate_panel(plan))
    if plan.problems and (yes or dry_run):
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        for problem in plan.problems:
            err.print(f"warning: {problem.line(flags=True)}", markup=False)
    elif plan.problems and not prompter.confirm(
        f"The plan has {len(plan.problems)} warning{'s' if len(plan.problems) > 1 else ''} (above). Render it anyway?"
    ):
        prompter.console.print("nothing written; change the answers, or pass --yes to render the plan as it is")
        raise typer.Exit(1)
    if dry_run:
        out.print("[bold]Answers[/bold] (.copier-answers.yml)")
        shown = {k: v for k, v in plan.answers.items() if k != "roadmap"}
        out.print(yaml.safe_dump(shown, sort_keys=False).rstrip(), markup=False)
        out.print(
            f"roadmap: {len(plan.answers['roadmap']['steps'])} steps with their estimates (ROADMAP.md)", markup=False
        )
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


class GoBack(Exception):
    """Raised by a prompt when the answer is `back`."""


def gather(
    questions: dict[str, Question], flags: dict[str, Any], replay: dict[str, Any], yes: bool, prompter: Prompter
) -> tuple[dict[str, Any], list[str]]:
    """(the given answers (see GIVEN), each validated, with notes on the defaults that budget and
    hardware settled); asks for what flags, file and --yes leave open."""
    tracks = load_tracks()
    given: dict[str, Any] = {}
    notes: dict[str, list[str]] = {}  # by question, so that going back drops them too

    def supplied(name: str) -> Any:
        return flags[name] if flags.get(name) is not None else replay.get(name)

    prompted: list[int] = []  # indices into ASKED of the questions answered at a prompt
    index = 0
    while index < len(ASKED):
        name = ASKED[index]
        value = supplied(name)
        if value is not None:
            given[name] = check_given(name, value, questions, tracks, given)
            index += 1
            continue
        default, why = default_answer(name, given, supplied, tracks)
        options = layout_options(name, given)
        if name == "hardware" and parse_budget(str(given["budget"])).hardware is not None:
            given[name], notes[name] = default, why  # the budget named it: nothing to ask
            index += 1
            continue
        if options is not None and len(options) < 2:
            given[name] = default  # one layout runs (or none is asked for): nothing to ask
            index += 1
            continue
        if yes:
            given[name], notes[name] = check_given(name, default, questions, tracks, given), why
            index += 1
            continue
        # tp and pp are named only once they are the question: before, whether they will be asked is open.
        missing = [
            FLAGS[n]
            for n in ASKED
            if n not in given and supplied(n) is None and (n not in ("tp", "pp") or name in ("tp", "pp"))
        ]
        try:
            given[name] = prompter.ask(
                questions[name],
                default,
                _checker(name, questions, tracks, given, supplied),
                missing,
                can_go_back=bool(prompted),
                choices=tuple(options) if options else None,
            )
        except GoBack:
            index = prompted.pop()
            for later in ASKED[index:]:
                given.pop(later, None)
                notes.pop(later, None)
            continue
        prompted.append(index)
        index += 1

    track = tracks[given["track"]]
    for name in GIVEN[len(ASKED) :]:
        value = supplied(name)
        if value is not None:
            given[name] = check_given(name, value, questions, tracks, given)
        elif name == "exercises":
            given[name] = track.defaults.exercises
    return given, [note for name in ASKED for note in notes.get(name, [])]


def default_answer(
    name: str, given: dict[str, Any], supplied: Callable[[str], Any], tracks: dict[str, Track]
) -> tuple[Any, list[str]]:
    """The default of one asked question given the answers before it (and a hardware flag, which the
    budget's default follows), with the notes that say how budget or hardware were settled."""
    first = next(iter(tracks))  # the first track (beginner) is the default track
    if name == "track":
        return first, []
    defaults = tracks[given.get("track", first)].defaults
    if name == "budget":
        hardware = supplied("hardware")
        budget, _, why = agree(None, str(hardware) if hardware is not None else None, defaults)
        return budget, why
    if name == "hardware":
        _, hardware, why = agree(str(given["budget"]), None, defaults)
        return hardware, why
    if name in ("tp", "pp"):
        return 1, []
    return getattr(defaults, name), []


def layout_options(name: str, given: dict[str, Any]) -> list[int] | None:
    """For the tp and pp questions, the values to offer given the answers before them: those reference_llm
    runs on a LAYOUT_TRACKS track with several GPUs under fsdp or auto, else only 1 (not asked); None for
    the other questions."""
    if name not in ("tp", "pp"):
        return None
    hardware = parse_hardware(str(given["hardware"]))
    if given["track"] not in LAYOUT_TRACKS or hardware.n_gpus < 2 or given["parallelism"] not in (AUTO, Strategy.FSDP):
        return [1]
    tps, pps = layout_choices(ModelConfig.preset(str(given["model_preset"])), hardware, int(given.get("tp", 1)))
    return tps if name == "tp" else pps


def _checker(
    name: str,
    questions: dict[str, Question],
    tracks: dict[str, Track],
    given: dict[str, Any],
    supplied: Callable[[str], Any],
) -> Callable[[str], Any]:
    """The check of one prompt's answer; a budget typed at the prompt must agree with a --hardware flag."""

    def check(text: str) -> Any:
        value = check_given(name, text, questions, tracks, given)
        if name == "budget" and supplied("hardware") is not None:
            check_agreement(str(value), str(supplied("hardware")))
        return value

    return check


def check_given(
    name: str, value: Any, questions: dict[str, Question], tracks: dict[str, Track], given: dict[str, Any]
) -> Any:
    """One given answer, parsed and validated against the answers before it; raises AnswerError naming
    its flag (and, for a budget and hardware that contradict each other, both flags)."""
    flag = FLAGS[name]
    if name == "tokens":  # counts like 2B or 1.5e9, not only integers
        return parse_count(value, flag)
    if isinstance(value, str) and questions[name].type != "str":
        value = questions[name].parse(value)
    if name == "track":
        if value not in tracks:
            raise AnswerError(f"--track must be one of {', '.join(tracks)}; got {value!r}")
    elif name == "budget":
        parse_budget(str(value))
    elif name == "hardware":
        parse_hardware(str(value))
        if "budget" in given:
            check_agreement(str(given["budget"]), str(value))
    elif name == "parallelism":
        if value not in PARALLELISMS:
            raise AnswerError(f"--parallelism must be one of {', '.join(PARALLELISMS)}; got {value!r}")
        check_parallelism(value, parse_hardware(str(given["hardware"])))
    elif name in ("tp", "pp"):
        if not isinstance(value, int) or isinstance(value, bool):  # from an answers file
            raise AnswerError(f"{flag} must be an integer; got {value!r}")
        tp, pp = (value, 1) if name == "tp" else (int(given.get("tp", 1)), value)
        check_layout(
            ModelConfig.preset(str(given["model_preset"])),
            parse_hardware(str(given["hardware"])),
            str(given["parallelism"]),
            tp,
            pp,
        )
    elif name == "precision":
        value = canonical_precision(str(value))
        if value not in questions["precision"].choices:
            raise AnswerError(f"--precision must be one of {', '.join(questions['precision'].choices)}; got {value!r}")
    else:  # model_preset, exercises, micro_batch, grad_accum: copier.yml's type, choices and validator
        validate(questions[name], value, {})
    return value


def read_answers_file(path: Path, questions: dict[str, Question]) -> dict[str, Any]:
    """The given answers in a YAML answers file. Keys starting with _ (Copier's own) and derived answers
    are ignored; unknown keys are an error."""
    data = read_yaml(path, f"--answers {path}", AnswerError)
    if not isinstance(data, dict):
        raise AnswerError(f"--answers {path}: must be a mapping of question: answer")
    unknown = sorted(str(k) for k in data if not str(k).startswith("_") and k not in questions)
    if unknown:
        raise AnswerError(f"--answers {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(questions)}")
    return {k: v for k, v in data.items() if k in GIVEN and v is not None}


class Prompter:
    """Asks one question on stderr and reads the answer from stdin.

    On a terminal a bad answer is explained and asked again. Without one (piped input), a bad answer
    is an error, and end of input names every flag still missing, so scripts fail at once. `back`
    returns to the previous prompted question, on a terminal or not.
    """

    def __init__(self) -> None:
        self.console = Console(stderr=True, highlight=False)

    def ask(
        self,
        question: Question,
        default: Any,
        check: Callable[[str], Any],
        missing: list[str],
        can_go_back: bool = False,
        choices: tuple[Any, ...] | None = None,
    ) -> Any:
        """One answer; `choices` overrides the question's (tp and pp: the values that run here)."""
        shown = choices or self.choices(question)
        choices_text = f" ({' | '.join(map(str, shown))})" if shown else ""
        self.console.print(
            f"[dim]{escape(question.help)}"
            + (" Type back to change the previous answer." if can_go_back else "")
            + "[/dim]"
        )
        while True:
            self.console.print(f"[bold]{question.name}[/bold]{escape(choices_text)} {escape(f'[{default}]')}: ", end="")
            line = self.read_line()
            if not line:
                raise AnswerError(
                    f"no answer for {', '.join(missing)} (input ended); pass "
                    f"{'them' if len(missing) > 1 else 'it'} as flags, or --yes for the defaults"
                )
            text = line.strip() or str(default)
            if text.lower() in BACK and can_go_back:
                raise GoBack
            try:
                return check(text)
            except LLMGenError as exc:  # AnswerError, or the estimator's EstimateError
                if not sys.stdin.isatty():
                    raise
                self.console.print(
                    f"[red]{escape(str(exc))}[/red]"
                    + (" [dim](or type back to change the previous answer)[/dim]" if can_go_back else "")
                )

    def confirm(self, question: str) -> bool:
        """A yes/no question, no by default; end of input is an error that names --yes."""
        self.console.print(escape(f"{question} [y/N]: "), end="")
        line = self.read_line()
        if not line:
            raise AnswerError(
                "the plan has warnings and no confirmation came (input ended); nothing written; "
                "pass --yes to render it anyway"
            )
        return line.strip().lower() in ("y", "yes")

    def read_line(self) -> str:
        line = sys.stdin.readline()
        if not sys.stdin.isatty():  # piped: show the answer, as a terminal would have echoed it
            self.console.print(line.rstrip("\n"), markup=False)
        return line

    @staticmethod
    def choices(question: Question) -> tuple[Any, ...]:
        return PARALLELISMS if question.name == "parallelism" else question.choices


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------


def estimate_panel(plan: RunPlan) -> Panel:
    est, a, f = plan.estimate, plan.answers, plan.facts
    devices = a["nodes"] * a["gpus_per_node"]
    plural = "s" if devices > 1 else ""
    b_opt = batch_bounds(f)[0]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row(
        "model",
        f"{a['model_preset']}: {si(est.params)} parameters, context {est.seq_len}; 6·N·D uses "
        f"N = {si(est.flops_params)} ({est.flops_params_source})",
    )
    epochs = f"; {epochs_text(a['tokens'] / f.corpus_tokens)} of {f.corpus}" if f.corpus_tokens else ""
    grid.add_row("tokens", f"{si(a['tokens'])} ({plan.tokens_note}){epochs}")
    grid.add_row("budget", plan.budget.describe())
    replicas = devices // (a["tp"] * a["pp"])
    grid.add_row("hardware", f"{a['hardware']}: {devices} device{plural}")
    grid.add_row("parallelism", plan.parallelism_reason)
    grid.add_row("layout", plan.layout)
    units = f"{devices} device{plural}" if replicas == devices else f"{replicas} replica{'s' if replicas > 1 else ''}"
    grid.add_row(
        "batch",
        f"{a['micro_batch']} x {a['grad_accum']} accumulation x {units} x "
        f"{est.seq_len} = {f.tokens_per_step:,} tokens per step (DeepSeek LLM's B_opt for "
        f"{est.flops_total:.3g} FLOPs: {si(b_opt)})",
    )
    grid.add_row(
        "schedule",
        f"{a['max_steps']:,} steps, warm-up {a['warmup_steps']:,}, learning rate "
        f"{a['learning_rate']:g} decaying to {a['min_lr']:g}",
    )
    grid.add_row(
        "compute", f"{est.flops_total:.3g} FLOPs at MFU {est.mfu:.2f} of {est.peak_tflops:g} TFLOP/s ({est.precision})"
    )
    grid.add_row("GPU-hours", f"{est.gpu_hours:,.3g}" + (" (CPU-hours)" if plan.hardware.is_cpu else ""))
    grid.add_row("wall time", duration(est.wall_hours) + (f"; {est.faster}" if est.faster else ""))
    grid.add_row(
        "cost",
        f"${est.cost_usd:,.2f}"
        + (" (your own machine)" if plan.hardware.is_cpu else f" at ${est.price_per_gpu_hour:.2f} per GPU-hour"),
    )
    verdict = "[green]fits[/green]" if est.fits else "[red]does NOT fit[/red]"
    grid.add_row(
        "memory", f"{est.memory_per_gpu_gib:.1f} GiB per device of {est.memory_usable_gib:.1f} usable: {verdict}"
    )
    for note in plan.notes:
        grid.add_row("note", escape(note))
    if plan.offer:
        grid.add_row("budget buys", escape(plan.offer))
    for problem in plan.problems:
        grid.add_row("[red]warning[/red]", f"[red]{escape(problem.line(flags=True))}[/red]")
    return Panel(grid, title=f"Plan for {a['project_name']} ({a['track']} track)", title_align="left")


def print_next_steps(out: Console, target: Path, files: list[str], git: bool) -> None:
    out.print(f"Created [bold]{target}[/bold]/ with {len(files)} files" + (" and a first git commit." if git else "."))
    out.print("Next steps (install llmgen from its own repository into this environment, not from PyPI):")
    for command, why in (
        (f"cd {target}", ""),
        ("pip install -e .", "this project, in the environment with llmgen"),
        ("llmgen check", "the plan and the configs agree"),
        ("make demo", "train briefly, then sample"),
        ("make test", "the checkpoint tests"),
    ):
        out.print(f"  {command:<20}" + (f"[dim]# {why}[/dim]" if why else ""))
