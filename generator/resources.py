"""Where the Copier template and the track data live.

In a source checkout (editable install) they are `templates/` and `tracks/` at the repository root. In
a wheel they are copied into the package as `generator/_bundled/templates` and `generator/_bundled/tracks`
(see the force-include table in pyproject.toml), because a non-editable install has no repository root.
The bundled copy wins when both exist, so an installed wheel never reads a stray checkout.
"""

from __future__ import annotations

from pathlib import Path

from generator.errors import LLMGenError

_PACKAGE_DIR = Path(__file__).resolve().parent
_CANDIDATES = (_PACKAGE_DIR / "_bundled", _PACKAGE_DIR.parent)


def _find(name: str, marker: str) -> Path:
    for root in _CANDIDATES:
        path = root / name
        if (path / marker).exists():
            return path
    searched = ", ".join(str(root / name) for root in _CANDIDATES)
    raise LLMGenError(f"llmgen's {name}/ folder is missing (looked in {searched}); reinstall llmgen")


def templates_dir() -> Path:
    """The Copier template: a folder holding copier.yml and the `project/` subdirectory."""
    return _find("templates", "copier.yml")


def tracks_dir() -> Path:
    """The folder of track files (beginner.toml, practitioner.toml, researcher.toml)."""
    return _find("tracks", "beginner.toml")
