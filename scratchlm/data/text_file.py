"""Read a data file as text: UTF-8 (a leading byte-order mark is dropped), and anything else is
an error that names the file, the line and the column, so the user can find the bad byte.

Every reader of user data (classification tables, instruction and preference files, CoNLL,
evaluation tasks, pretraining text) goes through ``read_text``.
"""

from __future__ import annotations

from pathlib import Path


class DataFileError(ValueError):
    """Input text that cannot be used; the message names the file (and line or byte offset)."""


def utf8_error(path: str | Path, raw: bytes, e: UnicodeDecodeError, first_line: int = 1) -> str:
    """'path:line: not UTF-8 text (...)' for a decoding error at ``e.start`` of ``raw``, whose
    first byte is on line ``first_line`` of the file."""
    line = first_line + raw.count(b"\n", 0, e.start)
    column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    return (f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {column}: "
            f"{e.reason}); save the file as UTF-8")


def read_text(path: str | Path) -> str:
    """The file's text; invalid UTF-8 is a DataFileError naming the file, line and column."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if raw.startswith(b"\xef\xbb\xbf"):  # positions without the byte-order mark
            raw = raw[3:]
        raise DataFileError(utf8_error(path, raw, e)) from None
