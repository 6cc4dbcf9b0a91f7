"""The book's first tokenizers (chapter 2): a regex split and a vocabulary built from a text.

``SimpleTokenizerV1`` knows only the words of its vocabulary; ``SimpleTokenizerV2`` adds
``<|unk|>`` for unknown words and ``<|endoftext|>`` to separate documents.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SPLIT = re.compile(r'([,.:;?_!"()\']|--|\s)')
UNK, EOT = "<|unk|>", "<|endoftext|>"


def split_words(text: str) -> list[str]:
    """The book's pre-processing: split on punctuation and whitespace, drop empty pieces."""
    return [s.strip() for s in SPLIT.split(text) if s.strip()]


def build_vocab(text: str, extra_tokens: Iterable[str] = ()) -> dict[str, int]:
    """Sorted unique words of ``text`` numbered from 0, then ``extra_tokens`` appended."""
    words = sorted(set(split_words(text)))
    words.extend(extra_tokens)
    return {tok: i for i, tok in enumerate(words)}


class SimpleTokenizerV1:
    def __init__(self, vocab: dict[str, int]):
        self.str_to_int = vocab
        self.int_to_str = {i: s for s, i in vocab.items()}
        self.special_tokens: dict[str, int] = {}
        self.vocab_size = len(vocab)

    @property
    def eos_id(self) -> int | None:
        return self.special_tokens.get(EOT)

    def _lookup(self, word: str) -> int:
        try:
            return self.str_to_int[word]
        except KeyError:
            raise ValueError(
                f"word {word!r} is not in the vocabulary; use SimpleTokenizerV2 (maps unknown "
                "words to <|unk|>) or build the vocabulary from a text that contains it"
            ) from None

    def encode(self, text: str, allowed_special=()) -> list[int]:
        return [self._lookup(w) for w in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        text = " ".join(self.int_to_str[i] for i in ids)
        return re.sub(r'\s+([,.?!"()\'])', r"\1", text)  # no space before punctuation


class SimpleTokenizerV2(SimpleTokenizerV1):
    def __init__(self, vocab: dict[str, int]):
        for tok in (UNK, EOT):
            if tok not in vocab:
                raise ValueError(f"SimpleTokenizerV2 needs {tok!r} in its vocabulary")
        super().__init__(vocab)
        self.special_tokens = {UNK: vocab[UNK], EOT: vocab[EOT]}

    def encode(self, text: str, allowed_special=()) -> list[int]:
        unk = self.str_to_int[UNK]
        return [self.str_to_int.get(w, unk) for w in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        text = " ".join(self.int_to_str[i] for i in ids)
        return re.sub(r'\s+([,.:;?!"()\'])', r"\1", text)
