"""JSON Lines: the values of a file's non-blank lines, each with its line number, so that a
reader can name the line of anything it refuses.

Not here: reading the file (``text_file.read_text``, which checks the UTF-8) and what a value
must hold (each reader's own check).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def json_lines(path: str | Path, text: str,
               error: type[ValueError] = ValueError) -> Iterator[tuple[int, object]]:
    """``(line number, value)`` for each non-blank line of ``text``, the contents of ``path``;
    a line that is not JSON is an ``error`` naming the file and line."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        yield lineno, value
