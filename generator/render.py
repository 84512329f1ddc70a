"""Render the Copier template into a temporary directory, then move the result into place.

Rendering never writes into the target directly: Copier renders into a temporary directory created next
to the target (on the same filesystem, so the final move is a rename), the bundled corpus is checked,
git makes the first commit, and only then is the directory renamed into place. A validation error, a
Copier failure or Ctrl-C therefore leaves no half-written project behind.

The corpus and its manifest are part of the template (templates/project/data/), so that plain
`copier copy` gives the same project as `llmgen new`; they are a copy of `reference_llm.assets`'
(git stores the identical file once), and every render checks the copy's sha256 against the library's
provenance record. Copier gets the roadmap in its compact form (`generator.roadmap.compact_roadmap`);
the template joins it with the track data it holds (templates/_roadmap.jinja).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import copier

from generator.errors import RenderError, TargetError
from generator.notebooks import write_notebooks
from generator.roadmap import compact_roadmap
from generator.roadmap_pdf import write_roadmap_pdf
from generator.template_repo import TemplateRef, ensure_template_repo
from reference_llm.assets import corpus_path, manifest

DATA_DIR = "data"
MANIFEST_HEADER = """\
# Provenance of every data file in data/: its source, version, SPDX licence and sha256.
# Add an entry for each file you add; the compliance checks compare these hashes with the files.
"""


def check_target(target: Path, force: bool) -> None:
    """Refuse a target that is a file, or a non-empty directory without --force."""
    if target.exists() and not target.is_dir():
        raise TargetError(f"{target} exists and is not a directory; choose another NAME or --dir")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise TargetError(
            f"directory {target} exists and is not empty; pass --force to write into it "
            "(files with the same names are replaced, others are kept)"
        )


def render_project(answers: dict[str, Any], target: Path, force: bool = False, git: bool = True) -> list[str]:
    """Generate the project at `target`; returns the relative paths written (sorted, without .git)."""
    target = target.absolute()
    check_target(target, force)
    if git and shutil.which("git") is None:
        raise RenderError("git is not installed; install it, or pass --no-git")
    merge = target.is_dir() and any(target.iterdir())
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.llmgen-", dir=_existing_ancestor(target)))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700); the project should not be
    try:
        files = render_into(answers, staging)
        if git and not merge:
            _git_first_commit(staging, answers)
        if merge:
            _merge_into(staging, target)
            if git and not (target / ".git").exists():
                _git_first_commit(target, answers)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.rmdir()  # empty, checked above; rename cannot replace it portably
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


def preview_files(answers: dict[str, Any]) -> list[str]:
    """The relative paths `render_project` would write, found by rendering into a throwaway directory."""
    with tempfile.TemporaryDirectory(prefix="llmgen-dry-run-") as scratch:
        return render_into(answers, Path(scratch))


def render_into(answers: dict[str, Any], directory: Path, template: TemplateRef | None = None) -> list[str]:
    """Copier render plus the corpus, into an existing empty `directory`; returns the relative paths.

    The template is rendered from llmgen's versioned git copy of it (`generator.template_repo`; default:
    the installed version's), so that the project records a stable _src_path and version for `llmgen update`.
    """
    template = template or ensure_template_repo()
    data = {**answers, "roadmap": compact_roadmap(answers["roadmap"])}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Copier warns about things (e.g. a dirty checkout) we do not use
            copier.run_copy(
                str(template.path),
                directory,
                vcs_ref=template.tag,
                data=data,
                defaults=True,
                unsafe=False,
                quiet=True,
                overwrite=True,
            )
    except (ValueError, copier.errors.CopierError) as exc:
        raise RenderError(f"template rendering failed: {' '.join(str(exc).split())}") from None
    add_corpus(directory / DATA_DIR)
    write_roadmap_pdf(directory, answers)  # ROADMAP.pdf, drawn from the same roadmap data (ReportLab)
    write_notebooks(answers, directory)  # notebooks/: one per roadmap step (generator/notebooks)
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(directory).parts
    )


def add_corpus(data_dir: Path) -> None:
    """Check the corpus the template rendered into `data_dir` against reference_llm's provenance record
    (its sha256), and its manifest against `corpus_manifest_text`."""
    entry = _corpus_entry()
    copy = data_dir / entry["path"]
    if not copy.is_file():
        raise RenderError(f"the template rendered no {DATA_DIR}/{entry['path']}; reinstall llmgen")
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise RenderError(
            f"the template's corpus {DATA_DIR}/{entry['path']} does not match its manifest sha256 "
            f"({digest} != {entry['sha256']}); reinstall llmgen"
        )
    if (data_dir / "manifest.toml").read_text(encoding="utf-8") != corpus_manifest_text():
        raise RenderError(
            f"the template's {DATA_DIR}/manifest.toml differs from reference_llm's record of the "
            f"corpus; reinstall llmgen"
        )


def corpus_manifest_text() -> str:
    """data/manifest.toml of a new project: the header and the bundled corpus' entry from
    reference_llm/assets/manifest.toml (templates/project/data/manifest.toml holds this text)."""
    # TOML basic strings share JSON's escapes, so json.dumps writes valid TOML values for strings.
    entry = _corpus_entry()
    lines = [MANIFEST_HEADER, "[[file]]"] + [f"{key} = {json.dumps(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


def _corpus_entry() -> dict[str, Any]:
    name = corpus_path().name
    entry = next((e for e in manifest() if e["path"] == name), None)
    if entry is None:
        raise RenderError(f"reference_llm/assets/manifest.toml has no entry for {name}; reinstall llmgen")
    return entry


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _existing_ancestor(target: Path) -> Path:
    """The nearest existing directory at or above target's parent: the staging directory goes there so
    that the final move stays on one filesystem, and no parent is created before rendering succeeds."""
    for parent in target.parents:
        if parent.is_dir():
            return parent
    raise TargetError(f"no existing directory above {target}")


def _merge_into(staging: Path, target: Path) -> None:
    """--force into a non-empty directory: move each rendered file over, keeping the user's other files."""
    for path in sorted(staging.rglob("*")):
        if path.is_dir():
            continue
        destination = target / path.relative_to(staging)
        if destination.parent.exists() and not destination.parent.is_dir():
            raise TargetError(f"{destination.parent} is a file, but the project needs a directory there")
        if destination.is_dir():
            raise TargetError(f"{destination} is a directory, but the project needs a file there")
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, destination)


def _git_first_commit(directory: Path, answers: dict[str, Any]) -> None:
    """git init, add everything, commit; with a local identity only when git has none configured."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True)

    identity: list[str] = []
    for key, fallback in (("user.name", "llmgen"), ("user.email", "llmgen@localhost")):
        if git("config", key).returncode != 0:  # nothing configured, in any scope
            identity += ["-c", f"{key}={fallback}"]
    message = f"Generated by llmgen new (track {answers['track']}, model {answers['model_preset']})"
    for name, args in (
        ("init", ["init", "-q"]),
        ("add", ["add", "-A"]),
        ("commit", [*identity, "commit", "-q", "-m", message]),
    ):
        result = git(*args)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise RenderError(
                f"git {name} failed: {detail[-1] if detail else 'exit code ' + str(result.returncode)}; "
                "fix git or pass --no-git"
            )
