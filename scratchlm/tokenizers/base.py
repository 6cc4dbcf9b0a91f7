"""The one small protocol every tokenizer follows, and the special-token rules they share.

A tokenizer has ``encode(text, allowed_special=...) -> list[int]``, ``decode(ids) -> str``,
``vocab_size`` and ``special_tokens`` (name -> id), plus ``eos_id`` (or None).

Special tokens follow tiktoken's rules: text that contains a special token's string is an error
unless that token is in ``allowed_special`` ("all" allows every one); allowed ones are encoded as
their single id.

Text from users (chat messages, instruction data, server requests) must never become a control
token: ``encode_protected`` encodes a rendered prompt whose template's special tokens are
control tokens while the special-token strings inside the user's spans stay ordinary text.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import Literal, Protocol, runtime_checkable

import regex

AllowedSpecial = Literal["all"] | Collection[str]


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    special_tokens: dict[str, int]

    @property
    def eos_id(self) -> int | None: ...

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


def resolve_allowed(allowed_special: AllowedSpecial, special_tokens: dict[str, int]) -> set[str]:
    if allowed_special == "all":
        return set(special_tokens)
    allowed = set(allowed_special)
    unknown = allowed - set(special_tokens)
    if unknown:
        raise ValueError(f"not special tokens of this tokenizer: {sorted(unknown)}")
    return allowed


def check_special(
    text: str, special_tokens: dict[str, int], allowed_special: AllowedSpecial
) -> set[str]:
    """Return the allowed special tokens; raise ValueError if ``text`` holds another one."""
    allowed = resolve_allowed(allowed_special, special_tokens)
    for tok in special_tokens:
        if tok not in allowed and tok in text:
            raise ValueError(
                f"text contains the special token {tok!r}, which is not allowed; pass "
                f"allowed_special={{{tok!r}}} to encode it as a special token"
            )
    return allowed


def split_special(
    text: str, special_tokens: dict[str, int], allowed_special: AllowedSpecial
) -> Iterator[tuple[str, int | None]]:
    """Yield ``(piece, None)`` for ordinary text and ``(token, id)`` for allowed special tokens.

    Raises ValueError when a special token that is not allowed appears in ``text``.
    """
    allowed = check_special(text, special_tokens, allowed_special)
    if not allowed:
        yield text, None
        return
    pattern = "(" + "|".join(regex.escape(t) for t in sorted(allowed, key=len, reverse=True)) + ")"
    for i, piece in enumerate(regex.split(pattern, text)):
        if i % 2:
            yield piece, special_tokens[piece]
        elif piece:
            yield piece, None


def encode_ordinary(tokenizer, text: str) -> list[int]:
    """``text`` with any special-token strings in it encoded as ordinary text."""
    fn = getattr(tokenizer, "encode_ordinary", None)
    if fn is not None:
        return fn(text)
    return tokenizer.encode(text)  # raises if it holds a special token it cannot encode as text


def encode_protected(tokenizer, text: str, untrusted: Iterable[tuple[int, int]]) -> list[int]:
    """Token ids of ``text`` where special-token strings are control tokens except inside the
    ``untrusted`` [start, end) spans (user content), where they are ordinary text.

    Text between the control tokens is encoded as one piece, so when no untrusted span holds a
    special string the ids equal ``tokenizer.encode(text, allowed_special="all")``."""
    specials = getattr(tokenizer, "special_tokens", {})
    spans = sorted(untrusted)
    if not specials or not any(t in text for t in specials):
        return encode_ordinary(tokenizer, text)
    pattern = regex.compile("|".join(regex.escape(t) for t in sorted(specials, key=len,
                                                                         reverse=True)))
    ids: list[int] = []
    start = 0
    for m in pattern.finditer(text):
        if any(a < m.end() and m.start() < b for a, b in spans):
            continue  # inside user content: ordinary text
        if m.start() > start:
            ids += encode_ordinary(tokenizer, text[start:m.start()])
        ids.append(specials[m.group()])
        start = m.end()
    if start < len(text):
        ids += encode_ordinary(tokenizer, text[start:])
    return ids


def held_back(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that begins ``marker`` (not all of it): what a
    stream holds back while a stop string or a call's marker may still be arriving."""
    first, lo = marker[0], max(0, len(text) - len(marker) + 1)
    i = text.find(first, lo)
    while i >= 0:
        if marker.startswith(text[i:]):
            return len(text) - i
        i = text.find(first, i + 1)
    return 0
