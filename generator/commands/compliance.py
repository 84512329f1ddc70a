"""`llmgen compliance`: check a generated repository's data manifest, licences and personal data.

`generator/cli.py` calls `register(app)`. The checks are `generator.compliance.check_repository`. A
failed check prints one line per problem on stderr and exits 2; warnings never fail. With `--json`,
stdout holds exactly one JSON document (the report), whatever the outcome.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from generator.compliance import MANIFEST, ComplianceReport, check_repository
from generator.questions import DIR_HELP, deprecated

FAILED_EXIT_CODE = 2


def compliance(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help=f"{DIR_HELP} (default: the current directory).", file_okay=False, show_default=False
        ),
    ] = None,
    path: Annotated[Path | None, typer.Option("--path", hidden=True, file_okay=False)] = None,
    max_pii: Annotated[
        int,
        typer.Option("--max-pii", help="Personal-data findings allowed over all data files before the check fails."),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Check data/manifest.toml (source, SPDX licence and sha256 of every data file, nothing unlisted),
    scan the data for personal data, and warn about share-alike or copyleft licences."""
    report = check_repository(deprecated("--path", path, directory) or Path("."), max_pii=max_pii)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        out = Console(highlight=False, soft_wrap=True)
        out.print(_table(report))
        for data_file in report.files:  # where each finding is (never the text found: it may be personal)
            for finding in data_file.pii_locations:
                out.print(str(finding), markup=False)
    for warning in report.warnings:
        err.print(f"warning: {warning}", markup=False)
    if not report.ok:
        for problem in report.problems:
            err.print(f"error: {problem}", markup=False)
        raise typer.Exit(FAILED_EXIT_CODE)
    if not as_json:
        err.print(
            f"compliance: {len(report.files)} data file(s) listed, sha256 verified, "
            f"{report.pii_total} personal-data finding(s) (allowed {report.max_pii})",
            markup=False,
        )


def register(app: typer.Typer) -> None:
    """Add `compliance` to the `llmgen` Typer app."""
    app.command("compliance")(compliance)


def _table(report: ComplianceReport) -> Table:
    table = Table(title=f"Data files in {MANIFEST}", title_justify="left")
    for column in ("file", "licence", "sha256", "personal data"):
        table.add_column(column)
    for data_file in report.files:
        if not data_file.listed:
            sha = "UNLISTED"
        elif data_file.sha256_actual is None:
            sha = "missing"
        else:
            sha = "ok" if data_file.sha256_actual == data_file.sha256_expected else "MISMATCH"
        pii = ", ".join(f"{kind} {n}" for kind, n in data_file.pii_counts.items()) or "none found"
        table.add_row(data_file.path, data_file.license or "-", sha, pii)
    return table
