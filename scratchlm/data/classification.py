"""Text classification data (the book's chapter 6): the UCI SMS spam pipeline, any CSV/JSONL
with text and label columns, and a dataset of padded token ids.

Malformed input is reported with the file and line. Labels map to ids in sorted order of their
names unless a map is given (SMS spam: ham 0, spam 1).
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import torch
from torch.utils.data import Dataset

from scratchlm.data.jsonl import json_lines
from scratchlm.data.text_file import read_text


class ClassificationDataError(ValueError):
    """A malformed row; the message names the file and line."""


def read_sms_spam(path: str | Path) -> list[tuple[str, str]]:
    """(label, text) rows of the UCI ``SMSSpamCollection`` (``label<TAB>text`` lines)."""
    rows = []
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line:
            continue
        label, sep, text = line.partition("\t")
        if not sep or label not in ("ham", "spam"):
            raise ClassificationDataError(f"{path}:{lineno}: expected 'ham|spam<TAB>text', "
                                          f"got {line[:60]!r}")
        rows.append((label, text))
    return rows


def balance(rows: list[tuple[str, str]], seed: int = 123) -> list[tuple[str, str]]:
    """Undersample every class to the size of the smallest (the book keeps all spam and a
    random 747 ham)."""
    by_label: dict[str, list] = {}
    for r in rows:
        by_label.setdefault(r[0], []).append(r)
    n = min(len(v) for v in by_label.values())
    rng = random.Random(seed)
    out = []
    for label in sorted(by_label):
        group = by_label[label]
        out.extend(group if len(group) == n else rng.sample(group, n))
    return out


def random_split(rows: list, train_frac: float = 0.7, val_frac: float = 0.1,
                 seed: int = 123) -> tuple[list, list, list]:
    """Shuffle with ``seed``, then cut into train / validation / test (the rest)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    a = int(len(rows) * train_frac)
    b = a + int(len(rows) * val_frac)
    return rows[:a], rows[a:b], rows[b:]


def write_csv(rows: list[tuple[str, str]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows(rows)
    return path


def read_table(path: str | Path, text_col: str = "text",
               label_col: str = "label") -> list[tuple[str, str]]:
    """(label, text) rows from a CSV/TSV (header row) or JSONL file. Errors name the file and
    line: text that is not UTF-8, a quote that is never closed, a row with more or fewer fields
    than the header, a missing or null label or text, a file with no rows."""
    path = Path(path)
    text = read_text(path)
    rows = []
    if path.suffix in (".jsonl", ".json"):
        for lineno, obj in json_lines(path, text, ClassificationDataError):
            if not isinstance(obj, dict):
                raise ClassificationDataError(f"{path}:{lineno}: expected an object")
            for col in (label_col, text_col):
                if obj.get(col) is None:
                    raise ClassificationDataError(
                        f"{path}:{lineno}: {col!r} is " + ("null" if col in obj else "missing"))
            rows.append((str(obj[label_col]), str(obj[text_col])))
    else:
        rows = _read_csv(path, text, text_col, label_col)
    if not rows:
        raise ClassificationDataError(f"{path}: no rows" + ("" if path.suffix in (".jsonl", ".json")
                                                           else " after the header"))
    return rows


def _read_csv(path: Path, text: str, text_col: str, label_col: str) -> list[tuple[str, str]]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1  # the line the record being read starts on
    try:
        header = next(reader, None)
        if header is None:
            raise ClassificationDataError(f"{path}: the file is empty")
        missing = sorted({text_col, label_col} - set(header))
        if missing:
            raise ClassificationDataError(f"{path}:1: missing column(s) {missing} (the header "
                                          f"has {header})")
        ti, li = header.index(text_col), header.index(label_col)
        rows = []
        start = reader.line_num + 1
        for row in reader:
            if not row:  # a blank line
                start = reader.line_num + 1
                continue
            if len(row) != len(header):
                raise ClassificationDataError(
                    f"{path}:{start}: {len(row)} fields, the header has {len(header)}"
                    + (" (an unquoted delimiter in the text?)" if len(row) > len(header) else ""))
            if not row[li]:
                raise ClassificationDataError(f"{path}:{start}: the label is empty")
            rows.append((row[li], row[ti]))
            start = reader.line_num + 1
    except csv.Error as e:
        raise ClassificationDataError(
            f"{path}:{start}: {e}; a quoted field that starts on this line is never closed"
            if "end of data" in str(e) or "EOF" in str(e) else f"{path}:{start}: {e}") from None
    return rows


def label_map(rows: list[tuple[str, str]], source: str = "the data") -> dict[str, int]:
    """Label name -> id in sorted order of the names; fewer than two labels is an error."""
    names = sorted({label for label, _ in rows})
    if len(names) < 2:
        raise ClassificationDataError(f"{source}: every row has the label {names[0]!r}; a "
                                      "classifier needs at least two labels")
    return {name: i for i, name in enumerate(names)}


class ClassificationDataset(Dataset):
    """Token ids padded to ``max_length`` (default: the longest text, capped by the model's
    context) with ``pad_id``; items are ((ids, length), label). ``length`` is the number of
    real tokens: predictions read the logits of the last real token, so the padding never
    changes a prediction (fixed or per-batch padding give the same answers)."""

    def __init__(self, rows: list[tuple[str, str]], tokenizer, labels: dict[str, int],
                 max_length: int | None = None, pad_id: int = 50256,
                 context_length: int | None = None):
        encoded = [tokenizer.encode(text) or [pad_id] for _, text in rows]
        longest = max(len(e) for e in encoded)
        self.max_length = max_length or longest
        if context_length is not None:
            self.max_length = min(self.max_length, context_length)
        unknown = {label for label, _ in rows} - set(labels)
        if unknown:
            raise ClassificationDataError(f"labels {sorted(unknown)} are not in {labels}")
        self.ids = torch.full((len(rows), self.max_length), pad_id, dtype=torch.long)
        self.lengths = torch.zeros(len(rows), dtype=torch.long)
        for i, e in enumerate(encoded):
            e = e[: self.max_length]
            self.ids[i, : len(e)] = torch.tensor(e)
            self.lengths[i] = len(e)
        self.labels = torch.tensor([labels[label] for label, _ in rows])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return (self.ids[i], self.lengths[i]), self.labels[i]


# ---------------------------------------------------------------- classification by generation
LABEL_CUE = "\nLabel:"


def label_prompt(text: str, tokenizer, max_length: int) -> list[int]:
    """``text`` (its first ``max_length`` tokens) followed by the cue ``"\\nLabel:"``: the
    model answers with a label word."""
    return tokenizer.encode(text)[:max_length] + tokenizer.encode(LABEL_CUE)


def label_word_items(rows: list[tuple[str, str]], tokenizer, label_words: dict[str, str],
                     max_length: int) -> list[tuple[list[int], list[int]]]:
    """``(ids, loss_mask)`` items (as ``data/instruction.render`` makes them) where only the
    label word after the cue is learned, e.g. ``"Win cash now!\\nLabel: spam"``."""
    items = []
    for label, text in rows:
        if label not in label_words:
            raise ClassificationDataError(f"label {label!r} has no label word in {label_words}")
        prompt = label_prompt(text, tokenizer, max_length)
        answer = tokenizer.encode(" " + label_words[label])
        items.append((prompt + answer, [0] * len(prompt) + [1] * len(answer)))
    return items


def classification_splits(data: str, text_col: str = "text", label_col: str = "label",
                          limit: int | None = None, seed: int = 123,
                          out: str | Path | None = None):
    """(train, val, test rows, label -> id) for ``sms-spam`` (balanced, as the book) or a
    CSV/TSV/JSONL table, split 70/10/20 with ``seed``; the splits are written as CSV files
    under ``out/data/`` when ``out`` is given."""
    from scratchlm.downloads.sources import fetch

    if data == "sms-spam":
        rows = balance(read_sms_spam(fetch("sms-spam")), seed=seed)
        labels = {"ham": 0, "spam": 1}
    else:
        rows = read_table(data, text_col, label_col)
        labels = label_map(rows, data)
    if limit is not None:
        rows = list(rows)
        random.Random(seed).shuffle(rows)
        rows = rows[:limit]
    train, val, test = random_split(rows, 0.7, 0.1, seed=seed)
    if out is not None:
        for name, part in (("train", train), ("validation", val), ("test", test)):
            write_csv(part, Path(out) / "data" / f"{name}.csv")
    return train, val, test, labels
