"""Where this project's files are, wherever a command is run from.

The package lives in src/<package>/ of the project (an editable install keeps it there), so the
project root is two folders up from this file.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "train.toml"
DATA = ROOT / "data"
CORPUS = DATA / "shakespeare.txt"
MANIFEST = DATA / "manifest.toml"
