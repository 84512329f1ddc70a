"""A versioned git copy of llmgen's Copier template, so that `copier update` works offline.

Copier's update replays the template version a project was made from and three-way merges the new one
into it; for that the template must be a git repository holding both versions, and the project's
`.copier-answers.yml` must name it (`_src_path`) and the version (`_commit`). Templates inside an
installed wheel are plain files, so llmgen materialises them into a cache folder that is a git
repository with one commit per distinct template content, tagged with the llmgen version:

    ~/.cache/llmgen/templates/        ($LLMGEN_TEMPLATE_CACHE, else $XDG_CACHE_HOME/llmgen/templates)
        .git/   tags v1.0.0, v1.1.0, ...   (v1.0.0+1, +2, ... for edited templates of an editable install)
        copier.yml  project/           the newest materialised version

`llmgen new` renders from this repository at the installed version's tag, so every project points at
the same stable location, and a later llmgen adds its own tag next to the earlier ones. Materialising
is idempotent and guarded by a file lock, so concurrent `llmgen` processes are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.version import InvalidVersion, Version

from generator.errors import TemplateRepoError
from generator.resources import templates_dir

try:
    import fcntl
except ImportError:  # Windows has no fcntl: no lock there, so avoid running two llmgen at once
    fcntl = None  # type: ignore[assignment]

CACHE_ENV = "LLMGEN_TEMPLATE_CACHE"
INDEX_FILE = "llmgen-index.json"  # in .git/: content hash -> tag (an unchanged template costs no git call);
# its presence also marks a repository as llmgen's template cache
_SKIP = {"__pycache__", ".git", ".DS_Store"}
# Commits are made by llmgen, not by the user: fixed identity, no hooks, no signing.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "llmgen",
    "GIT_AUTHOR_EMAIL": "llmgen@localhost",
    "GIT_COMMITTER_NAME": "llmgen",
    "GIT_COMMITTER_EMAIL": "llmgen@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


@dataclass(frozen=True)
class TemplateRef:
    """Where to render from: a git repository and the tag of one template version in it."""

    path: Path
    tag: str

    @property
    def version(self) -> Version:
        return tag_version(self.tag)


def llmgen_version() -> str:
    """The installed llmgen's version; in a source checkout that is not installed, pyproject.toml's."""
    try:
        return metadata.version("llmgen")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            raise TemplateRepoError(
                "cannot tell llmgen's version: it is not installed and pyproject.toml is unreadable; reinstall llmgen"
            ) from None


def tag_version(tag: str) -> Version:
    """'v1.2.0' or 'v1.2.0+1' -> Version; an unparsable tag raises TemplateRepoError."""
    try:
        return Version(tag.removeprefix("v"))
    except InvalidVersion:
        raise TemplateRepoError(f"template version {tag!r} is not a vX.Y.Z tag made by llmgen") from None


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmgen" / "templates"


def ensure_template_repo(
    version: str | None = None, source: Path | None = None, cache_dir: Path | None = None
) -> TemplateRef:
    """Make sure the cache repository holds `source` (default: the bundled template) tagged for `version`
    (default: the installed llmgen's), and return where it is and the tag to render from."""
    version = version or llmgen_version()
    source = (source or templates_dir()).resolve()
    repo = (cache_dir or default_cache_dir()).expanduser().resolve()
    content = content_hash(source)
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TemplateRepoError(
            f"cannot create the template cache {repo} ({exc.strerror}); set {CACHE_ENV} to a writable folder"
        ) from None
    with _locked(repo):
        if not (repo / ".git").is_dir():
            _git(repo, "init", "--quiet")
        index_path = repo / ".git" / INDEX_FILE
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        key = f"{version} {content}"
        tag = index.get(key)
        if tag is None or not _has_tag(repo, tag):
            tag = _commit_version(repo, source, version)
            index[key] = tag
            index_path.write_text(json.dumps(index, indent=1, sort_keys=True))
    return TemplateRef(repo, tag)


def content_hash(source: Path) -> str:
    """sha256 over every template file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in _files(source):
        digest.update(path.relative_to(source).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def has_tag(repo: Path, tag: str) -> bool:
    """Whether the cache repository at `repo` holds the template version `tag`."""
    return (repo / ".git").is_dir() and _has_tag(repo, tag)


# ----------------------------------------------------------------------------------------------------
# git plumbing
# ----------------------------------------------------------------------------------------------------


def _commit_version(repo: Path, source: Path, version: str) -> str:
    """Put `source` into the work tree, commit it if the content is new, and tag it for `version`.

    The same version with different content (templates edited in an editable install) gets the tag
    v<version>+<n>, a PEP 440 local version that sorts after the earlier ones (Copier refuses to update
    to an older version), so the released tag is never moved.
    """
    for entry in repo.iterdir():
        if entry.name != ".git":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for path in _files(source):
        target = repo / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    _git(repo, "add", "--all", "--force")
    tree = _git(repo, "write-tree")
    for tag in _git(repo, "tag", "--list", f"v{version}", f"v{version}+*").split():
        if _git(repo, "rev-parse", f"{tag}^{{tree}}") == tree:
            return tag
    head = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD", check=False)
    if not head or _git(repo, "rev-parse", "HEAD^{tree}") != tree:
        _git(repo, "commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", f"llmgen {version} template")
    taken = _git(repo, "tag", "--list", f"v{version}", f"v{version}+*").split()
    tag = f"v{version}+{len(taken)}" if taken else f"v{version}"
    _git(repo, "-c", "tag.gpgSign=false", "tag", tag)
    return tag


def _has_tag(repo: Path, tag: str) -> bool:
    return bool(_git(repo, "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}", check=False))


def _files(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*") if p.is_file() and not _SKIP.intersection(p.relative_to(source).parts))


def _git(repo: Path, *args: str, check: bool = True) -> str:
    try:
        result = subprocess.run(
            ["git", *args], cwd=repo, env={**os.environ, **_GIT_ENV}, capture_output=True, text=True
        )
    except FileNotFoundError:
        raise TemplateRepoError(
            "git is not installed; llmgen keeps its template versions in a git repository (install git)"
        ) from None
    if check and result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise TemplateRepoError(f"git {' '.join(args)} failed in {repo}: {last}")
    return result.stdout.strip()


@contextmanager
def _locked(repo: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache while it is read and written (other llmgen processes wait)."""
    if fcntl is None:
        yield
        return
    with open(repo.parent / f".{repo.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
