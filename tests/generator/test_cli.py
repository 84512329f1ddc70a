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


def test_version_and_short_help():
    from generator.template_repo import llmgen_version

    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout == f"llmgen {llmgen_version()}\n"
    for args in (["-h"], ["new", "-h"], ["check", "-h"], ["estimate", "-h"], ["update", "-h"], ["compliance", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage:" in result.stdout, args
        assert result.stdout == runner.invoke(app, [*args[:-1], "--help"]).stdout


def test_one_flag_for_the_folder_and_one_for_the_preset():
    """--dir in every command with a project folder, --model in every command with a preset; the old
    spellings are hidden from --help."""
    runner = CliRunner(env={"COLUMNS": "200"})
    for command in ("new", "check", "update", "compliance"):
        text = runner.invoke(app, [command, "--help"]).stdout
        assert "--dir" in text and "--path" not in text, command
    for command in ("new", "estimate"):
        text = runner.invoke(app, [command, "--help"]).stdout
        assert "--model " in text and "--model-preset" not in text, command


def test_old_spellings_work_with_one_deprecation_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["compliance", "--path", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == "warning: --path is deprecated; use --dir"
    assert result.stderr.splitlines()[1].startswith("error: ") and "manifest.toml not found" in result.stderr
    both = runner.invoke(app, ["update", "--path", str(tmp_path), "--dir", str(tmp_path)])
    assert both.exit_code == 2 and both.stderr.strip() == (
        "error: --path and --dir are the same flag (--path is its old name); give only --dir"
    )
