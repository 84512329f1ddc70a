"""generator/cli.py registers every command module by an explicit import: a module added to (or renamed
in) generator/commands/ that cli.py does not import fails here instead of vanishing from `llmgen --help`."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

from typer.testing import CliRunner

import generator.commands
from generator.cli import COMMANDS, app


def command_modules() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(generator.commands.__path__)}


def test_every_command_module_is_registered_and_listed_in_help():
    modules = command_modules()
    assert modules, "no command modules found"
    assert {m.__name__.rsplit(".", 1)[-1] for m in COMMANDS} == modules
    assert {c.name for c in app.registered_commands} == modules  # each register() adds its own name
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 1}
    assert modules <= listed, modules - listed


def test_help_lists_commands_without_importing_torch():
    """`llmgen --help` imports every command module, and none of them may pull in torch (over a second)."""
    code = "import sys, generator.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
