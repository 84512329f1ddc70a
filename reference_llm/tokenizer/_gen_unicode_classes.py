"""Write `unicode_classes.py`: the Unicode character classes of GPT-2's pre-tokeniser, pinned to one version.

    python -m reference_llm.tokenizer._gen_unicode_classes --force reference_llm/tokenizer/unicode_classes.py

GPT-2's regex uses `\\p{L}` (letters), `\\p{N}` (numbers) and `\\s` (White_Space). Which code points those
are depends on the Unicode tables of the regex engine, and new Unicode versions turn unassigned code
points into letters (Unicode 17's CJK Extension J, for one). tiktoken and HF `tokenizers` carry their
own tables; the `regex` module's move with each release. Writing the classes out as explicit code-point
ranges of one Unicode version, the one tiktoken and `tokenizers` use, makes our pre-tokenisation, and so
our ids, independent of the installed `regex`.

The tables come from Python's `unicodedata` when its version is the pinned one (Python 3.14), else from
the `unicodedata2` backport (`pip install unicodedata2==16.0.0`, in the `parity` extra). Nothing is
downloaded. White_Space is not in `unicodedata`; it is copied below from the UCD's PropList.txt (the list
has not changed since Unicode 6.3 removed U+180E).
"""

from __future__ import annotations

import os
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

from reference_llm.errors import ConfigError

# The version tiktoken 0.14 (Rust `regex` crate) and HF tokenizers 0.23 (Oniguruma) agree on: their
# \p{L} and \p{N} match exactly the L* and N* code points of Unicode 16.0 (tests/reference/test_tokenizer_unicode.py).
UNICODE_VERSION = "16.0.0"

# PropList.txt, White_Space=yes: TAB..CR, space, NEL, NBSP, Ogham space, en quad..hair space, line and
# paragraph separators, narrow NBSP, medium math space, ideographic space.
WHITE_SPACE = (
    (0x09, 0x0D),
    (0x20, 0x20),
    (0x85, 0x85),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
)

RANGES_PER_LINE = 5


def unicode_database() -> ModuleType:
    """`unicodedata` or `unicodedata2`, whichever has the pinned Unicode version."""
    if unicodedata.unidata_version == UNICODE_VERSION:
        return unicodedata
    try:
        import unicodedata2
    except ImportError:
        found = "not installed"
    else:
        if unicodedata2.unidata_version == UNICODE_VERSION:
            return unicodedata2
        found = f"version {unicodedata2.unidata_version}"
    raise ConfigError(
        f"Unicode {UNICODE_VERSION} tables are needed: Python's unicodedata is {unicodedata.unidata_version} and "
        f"unicodedata2 is {found}; install it with: pip install unicodedata2=={UNICODE_VERSION}"
    )


def ranges(keep: Callable[[int], bool]) -> list[tuple[int, int]]:
    """The code points 0..0x10FFFF for which `keep` is true, as inclusive (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for cp in range(0x110000):
        if not keep(cp):
            continue
        if runs and runs[-1][1] == cp - 1:
            runs[-1] = (runs[-1][0], cp)
        else:
            runs.append((cp, cp))
    return runs


def render_table(name: str, comment: str, runs: Iterable[tuple[int, int]]) -> str:
    runs = list(runs)
    count = sum(last - first + 1 for first, last in runs)
    lines = [f"# {comment}: {count:,} code points in {len(runs)} ranges.", f"{name}: tuple[tuple[int, int], ...] = ("]
    for i in range(0, len(runs), RANGES_PER_LINE):
        lines.append("    " + " ".join(f"(0x{a:04X}, 0x{b:04X})," for a, b in runs[i : i + RANGES_PER_LINE]))
    return "\n".join([*lines, ")", ""])


def render_module() -> str:
    db = unicode_database()
    category: Callable[[str], str] = db.category
    letters = ranges(lambda cp: category(chr(cp)).startswith("L"))
    numbers = ranges(lambda cp: category(chr(cp)).startswith("N"))
    header = f'''"""Unicode {UNICODE_VERSION} character classes of GPT-2's pre-tokeniser. Generated: do not edit.

Written by reference_llm/tokenizer/_gen_unicode_classes.py from the Unicode Character Database
(Python's unicodedata or the unicodedata2 backport, at version {UNICODE_VERSION}); regenerate with
    python -m reference_llm.tokenizer._gen_unicode_classes --force reference_llm/tokenizer/unicode_classes.py
Ranges are inclusive (first, last) code points in ascending order.
"""

UNICODE_VERSION = "{UNICODE_VERSION}"

'''
    return "\n".join(
        [
            header.rstrip("\n") + "\n",
            render_table("LETTER", "General_Category L (Lu, Ll, Lt, Lm, Lo), GPT-2's \\p{L}", letters),
            render_table("NUMBER", "General_Category N (Nd, Nl, No), GPT-2's \\p{N}", numbers),
            render_table("WHITE_SPACE", "PropList.txt White_Space, GPT-2's \\s", WHITE_SPACE),
        ]
    )


def write_new(path: Path, text: str, force: bool) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a module."""
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise ConfigError(f"{path.parent} is not a directory")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a module must be readable by every user that imports it
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    from reference_llm.cli import ArgumentParser

    parser = ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="module to write (reference_llm/tokenizer/unicode_classes.py)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    write_new(args.out, render_module(), args.force)
    print(f"wrote Unicode {UNICODE_VERSION} classes to {args.out}")
    return 0


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
