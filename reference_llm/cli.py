"""Shared plumbing for the `python -m reference_llm.<command>` entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from reference_llm.errors import ConfigError, ReferenceLLMError


def run_main(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; a `ReferenceLLMError` becomes one line on stderr and exit code 2."""
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except ReferenceLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2, like every other user error."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")
