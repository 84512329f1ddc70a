"""The `llmgen` command line (console script `llmgen = generator.cli:main`).

Each command lives in `generator/commands/<name>.py` and adds itself with `register(app)`; this module
imports every one of them by name (a test checks that none in that folder is left out). This module
is the one place where user errors become output: an `LLMGenError` or `ReferenceLLMError` raised by any
command, and any usage error (unknown flag, missing argument), prints `error: <message>` as one line on
stderr and exits with code 2, without a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from generator.commands import calibrate, check, compliance, estimate, new, roadmap, tracks, update
from generator.errors import LLMGenError
from generator.template_repo import llmgen_version
from reference_llm.errors import ReferenceLLMError

# Commands in the order `llmgen --help` lists them.
COMMANDS = (new, tracks, estimate, calibrate, check, update, compliance, roadmap)


class _Group(TyperGroup):
    """Typer's group with one-line errors (Typer's default draws a multi-line panel)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # usage errors: unknown flag, missing argument, bad value
            message, code = exc.format_message(), 2
        except (LLMGenError, ReferenceLLMError) as exc:
            message, code = str(exc), getattr(exc, "exit_code", 2)
        except typer.Abort:
            message, code = "aborted", 130
        else:
            code = result if isinstance(result, int) else 0
            if standalone_mode:
                sys.exit(code)
            return code
        typer.echo(f"error: {' '.join(message.split())}", err=True)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="llmgen",
    cls=_Group,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Generate a repository that builds, trains and tests a language model from scratch.",
    context_settings={"help_option_names": ["-h", "--help"]},  # commands inherit it from the group
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"llmgen {llmgen_version()}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print llmgen's version and exit.")
    ] = False,
) -> None:
    if ctx.invoked_subcommand is None:  # plain `llmgen`: the help, as a successful run
        typer.echo(ctx.get_help())


for _command in COMMANDS:
    _command.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
