"""Data files that ship with the library: the bundled corpus and its provenance manifest."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

ASSETS_DIR = Path(__file__).parent


def corpus_path() -> Path:
    """The bundled ~1 MB public-domain Shakespeare corpus."""
    return ASSETS_DIR / "shakespeare.txt"


def manifest() -> list[dict[str, Any]]:
    """Entries of `manifest.toml`: path, source, licence (SPDX) and sha256 for each shipped file."""
    return tomllib.loads((ASSETS_DIR / "manifest.toml").read_text(encoding="utf-8"))["file"]
