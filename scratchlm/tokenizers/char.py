"""Character-level tokenizer: one id per distinct character of a training text (nanoGPT's
shakespeare_char). Unknown characters are an error naming the character."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


class CharTokenizer:
    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens: dict[str, int] = {}
        self.vocab_size = len(self.chars)

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(text)

    @property
    def eos_id(self) -> int | None:
        return None

    def encode(self, text: str, allowed_special=()) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"type": "char", "chars": self.chars}))

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        return cls(json.loads(Path(path).read_text())["chars"])
