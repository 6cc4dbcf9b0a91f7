"""CoNLL-style token-tagging data: one ``token<TAB>tag`` line per word, a blank line between
sentences (``-DOCSTART-`` lines are skipped; with more than two columns the first is the token
and the last the tag, as in CoNLL-2003). Tags are IOB2 (``B-PER``, ``I-PER``, ``O``).

Words become sub-word tokens; a word's tag goes to its first sub-token and the others get -100,
so the loss and the predictions are per word (the Hugging Face convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from scratchlm.data.text_file import read_text

IGNORE_INDEX = -100


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]


def read_conll(path: str | Path) -> list[Sentence]:
    """Sentences of a CoNLL file; a malformed line raises ValueError naming file and line."""
    path = Path(path)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            if words:
                sentences.append(Sentence(words, tags))
                words, tags = [], []
            continue
        if line.startswith("-DOCSTART-"):
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) < 2 or not cols[0] or not cols[-1]:
            raise ValueError(f"{path}:{lineno}: expected 'token<TAB>tag', got {line!r}")
        tag = cols[-1]
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise ValueError(f"{path}:{lineno}: tag {tag!r} is not IOB2 (O, B-X or I-X)")
        words.append(cols[0])
        tags.append(tag)
    if words:
        sentences.append(Sentence(words, tags))
    if not sentences:
        raise ValueError(f"{path}: no sentences")
    return sentences


def tag_vocabulary(sentences: list[Sentence]) -> list[str]:
    """All tags, ``O`` first, then sorted by entity type with ``B-`` before ``I-``."""
    tags = {t for s in sentences for t in s.tags} | {"O"}
    return ["O"] + sorted(tags - {"O"}, key=lambda t: (t[2:], t[:2]))


def encode_sentence(sentence: Sentence, tokenizer, tag_ids: dict[str, int],
                    max_length: int) -> tuple[list[int], list[int]]:
    """(token ids, labels): each word's tag on its first sub-token, -100 on the rest. Words
    after the first are encoded with a leading space, as they appear in running text."""
    ids: list[int] = []
    labels: list[int] = []
    for j, (word, tag) in enumerate(zip(sentence.words, sentence.tags)):
        if tag not in tag_ids:
            raise ValueError(f"tag {tag!r} is not in the tag set ({', '.join(tag_ids)})")
        pieces = tokenizer.encode(word if j == 0 else " " + word) or [0]
        ids += pieces
        labels += [tag_ids[tag]] + [IGNORE_INDEX] * (len(pieces) - 1)
    return ids[:max_length], labels[:max_length]


class TokenTaggingDataset(Dataset):
    """Items ``(ids, labels)`` as lists; ``TaggingCollate`` pads them."""

    def __init__(self, sentences: list[Sentence], tokenizer, tags: list[str], max_length: int):
        self.sentences = sentences
        tag_ids = {t: i for i, t in enumerate(tags)}
        self.items = [encode_sentence(s, tokenizer, tag_ids, max_length) for s in sentences]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class TaggingCollate:
    """Pad to the longest in the batch: inputs with ``pad_id``, labels with -100."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch):
        width = max(len(ids) for ids, _ in batch)
        x = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        y = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, labels) in enumerate(batch):
            x[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            y[i, :len(labels)] = torch.tensor(labels, dtype=torch.long)
        return x, y
