"""Reading YAML the user hands us (`--answers FILE`, a project's `.copier-answers.yml`): bounded and plain.

An answers file is a few kilobytes of plain keys and values. So a file is read through a size cap (a
device such as /dev/zero, or a multi-gigabyte file, is refused before it fills memory), must be UTF-8,
and may not use YAML anchors and aliases, which nothing we write uses and which let a few hundred bytes
expand into gigabytes ("billion laughs"). Every failure is one `LLMGenError` line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from generator.errors import LLMGenError

MAX_YAML_BYTES = 1 << 20  # 1 MiB: two hundred times the largest answers file llmgen writes


class _PlainLoader(yaml.SafeLoader):
    """yaml's safe loader without anchors/aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"uses a YAML alias (*{event.anchor}) at line {event.start_mark.line + 1}; "
                f"answers files are plain keys and values"
            )
        return super().compose_node(parent, index)


def read_yaml(path: Path, what: str, error: type[LLMGenError] = LLMGenError) -> Any:
    """The parsed content of `path`, or `error` with one line starting with `what` (e.g. "--answers x.yml")."""
    try:
        if not path.exists():
            raise error(f"{what}: cannot read (no such file)")
        if not path.is_file():
            raise error(f"{what}: not a regular file")
        with path.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise error(f"{what}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise error(f"{what}: larger than {MAX_YAML_BYTES >> 20} MiB, which no answers file is")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what}: not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise error(f"{what}: not valid YAML ({' '.join(str(exc).split())[:300]})") from None
    except RecursionError:
        raise error(f"{what}: nested deeper than an answers file can be") from None
