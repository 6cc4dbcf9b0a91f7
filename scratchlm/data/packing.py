"""Rows of training tokens from a corpus of documents: how documents become (inputs, targets).

``concat`` (the book's, and ``ShardDataset``'s): the documents as one stream, cut into windows;
a window may start mid-document and hold the end of one and the start of the next.

``bestfit`` (nanochat's loader): every row is filled with whole documents that start at its
position 0, chosen best-fit by length from a window of shuffled documents (the longest that
still fits, then the next); when none fits the rest of a row, the shortest is cropped to fill it
and its tail is dropped. A document longer than a row is split into row-sized pieces first.
There is no padding; ``cropped_fraction`` says what share of the tokens were dropped. The plan
of every row is made once, from ``seed``, so the dataset is a plain indexable one: exact resume
and the distributed sampler work on it as on windows.

With ``doc_mask`` a row's inputs are ``(ids, segments)``, the document index of each position,
so attention stays inside each document and positions restart with it (``nn/doc_mask.py``).

``TokenStream`` reads any span of the shards' concatenated token stream (documents may cross
shard files), and ``document_split`` holds out whole documents for validation.
"""

from __future__ import annotations

import bisect
import json
from array import array
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

PACKINGS = ("concat", "bestfit")


class TokenStream:
    """The tokens of a corpus: a shard folder's memory-mapped files (``data/shards.py``), or one
    array in memory; and where its documents start."""

    def __init__(self, parts: list[np.ndarray], doc_starts: np.ndarray):
        self.parts = parts
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        self.doc_starts = doc_starts.astype(np.int64)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "TokenStream":
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        parts = [np.memmap(folder / s["file"], dtype=dtype, mode="r") for s in meta["shards"]]
        docs = folder / meta.get("docs", "docs.bin")
        starts = np.fromfile(docs, dtype=np.uint64) if docs.is_file() else np.zeros(1)
        return cls(parts, starts)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens ``[start, start + n)`` as int64, across shard files when needed."""
        out, end = [], start + n
        k = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < end:
            local = start - self.offsets[k]
            take = min(end, self.offsets[k + 1]) - start
            out.append(self.parts[k][local:local + take])
            start += take
            k += 1
        return np.concatenate(out).astype(np.int64) if len(out) > 1 else out[0].astype(np.int64)

    def documents(self, lo: int, hi: int) -> np.ndarray:
        """(N, 2) start and length of the documents starting in ``[lo, hi)``, each ending at
        the next start (or ``hi``)."""
        starts = self.doc_starts[(self.doc_starts >= lo) & (self.doc_starts < hi)]
        if len(starts) == 0 or starts[0] != lo:
            starts = np.concatenate([[lo], starts])
        lengths = np.concatenate([starts[1:], [hi]]) - starts
        keep = lengths > 0
        return np.stack([starts[keep], lengths[keep]], axis=1).astype(np.int64)


def document_split(stream: TokenStream, val_fraction: float) -> tuple[int, str]:
    """(the token offset where validation starts, how it was chosen). Whole documents are held
    out: the document start nearest to ``1 - val_fraction`` of the tokens, when that leaves
    between half and twice the asked share; a corpus of too few documents falls back to the
    book's split of the token stream."""
    total = len(stream)
    want = int(total * (1 - val_fraction))
    if val_fraction <= 0:
        return total, "no validation"
    starts = stream.doc_starts[(stream.doc_starts > 0) & (stream.doc_starts < total)]
    if len(starts):
        cut = int(starts[np.abs(starts - want).argmin()])
        share = (total - cut) / total
        if val_fraction / 2 <= share <= val_fraction * 2:
            return cut, f"the last {np.sum(stream.doc_starts >= cut)} whole documents"
    return want, "the tail of the token stream (too few documents to hold out whole ones)"


def _row(chunk: np.ndarray, segments: np.ndarray | None):
    """(inputs, targets) of a row of ``max_length + 1`` tokens; inputs are (ids, segments)
    when the row carries its documents."""
    chunk = torch.from_numpy(chunk)
    if segments is None:
        return chunk[:-1], chunk[1:]
    return (chunk[:-1], torch.from_numpy(segments[:-1])), chunk[1:]


class WindowDataset(Dataset):
    """``concat``: windows of ``max_length + 1`` tokens every ``stride`` tokens of ``[lo, hi)``;
    targets are the inputs shifted by one."""

    def __init__(self, stream: TokenStream, max_length: int, lo: int = 0, hi: int | None = None,
                 stride: int | None = None, doc_mask: bool = False):
        hi = len(stream) if hi is None else hi
        self.stream, self.max_length, self.stride = stream, max_length, stride or max_length
        self.lo, self.doc_mask = lo, doc_mask
        self.n = max(0, (hi - lo - max_length - 1) // self.stride + 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        start = self.lo + i * self.stride
        chunk = self.stream.read(start, self.max_length + 1)
        segments = None
        if self.doc_mask:
            where = np.arange(start, start + self.max_length + 1)
            segments = np.searchsorted(self.stream.doc_starts, where, side="right")
        return _row(chunk, segments)


class RowPlan:
    """Which (start, length) segments of the stream fill each row, in three flat arrays (24
    bytes a segment, not a Python tuple each: a plan of millions of documents stays small).
    ``plan[i]`` is row i's segments as a list of (start, length)."""

    def __init__(self, row_ptr: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
        self.row_ptr, self.starts, self.lengths = row_ptr, starts, lengths

    def __len__(self) -> int:
        return len(self.row_ptr) - 1

    def __getitem__(self, i: int) -> list[tuple[int, int]]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        a, b = self.row_ptr[i], self.row_ptr[i + 1]
        return list(zip(self.starts[a:b].tolist(), self.lengths[a:b].tolist()))

    def __eq__(self, other) -> bool:
        return isinstance(other, RowPlan) and all(
            np.array_equal(x, y) for x, y in ((self.row_ptr, other.row_ptr),
                                              (self.starts, other.starts),
                                              (self.lengths, other.lengths)))


def best_fit_rows(docs, row: int, seed: int, window: int = 1000) -> tuple[RowPlan, int]:
    """The plan of every row (segments filling ``row`` tokens) and the number of tokens
    cropped, for ``docs``: (start, length) pairs, a list or an (N, 2) array. Documents are
    taken in a shuffled order (``seed``), ``window`` at a time, best-fit by length (see the
    module doc)."""
    docs = np.asarray(docs, dtype=np.int64).reshape(-1, 2)
    doc_starts, doc_lens = docs[:, 0], docs[:, 1]
    pieces = np.maximum(1, -(-doc_lens // row))  # row-sized pieces per document
    first = np.repeat(np.cumsum(pieces) - pieces, pieces)
    k = np.arange(int(pieces.sum())) - first  # the piece's index inside its document
    owner = np.repeat(np.arange(len(docs)), pieces)
    p_start = doc_starts[owner] + k * row
    p_len = np.minimum(row, doc_lens[owner] - k * row)
    order = np.random.default_rng(seed).permutation(len(p_start))
    pending: list[tuple[int, int]] = []  # (length, piece), sorted
    nxt, cropped = 0, 0
    row_ptr, starts, lengths = array("q", [0]), array("q"), array("q")

    def refill():
        nonlocal nxt
        while len(pending) < window and nxt < len(order):
            i = int(order[nxt])
            bisect.insort(pending, (int(p_len[i]), i))
            nxt += 1

    refill()
    while pending:
        left, used = row, 0
        while left and pending:
            j = bisect.bisect_right(pending, (left, len(p_start))) - 1
            length, i = pending.pop(max(j, 0))  # the longest that fits, else the shortest
            starts.append(int(p_start[i]))
            lengths.append(min(length, left))
            cropped += max(0, length - left)
            left -= min(length, left)
            used += 1
            refill()
        if left:  # the corpus ran out inside this row: its tokens are dropped
            cropped += row - left
            del starts[len(starts) - used:], lengths[len(lengths) - used:]
            break
        row_ptr.append(len(starts))
    plan = RowPlan(np.frombuffer(row_ptr, dtype=np.int64).copy(),
                   np.frombuffer(starts, dtype=np.int64).copy(),
                   np.frombuffer(lengths, dtype=np.int64).copy())
    return plan, cropped


class BestFitDataset(Dataset):
    """``bestfit``: rows of ``max_length + 1`` tokens of whole documents (see the module doc)
    from the documents starting in ``[lo, hi)``."""

    def __init__(self, stream: TokenStream, max_length: int, lo: int = 0, hi: int | None = None,
                 seed: int = 0, doc_mask: bool = False):
        hi = len(stream) if hi is None else hi
        self.stream, self.max_length, self.doc_mask = stream, max_length, doc_mask
        self.rows, cropped = best_fit_rows(stream.documents(lo, hi), max_length + 1, seed)
        self.cropped_fraction = cropped / max(1, hi - lo)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        segments = self.rows[i]
        chunk = np.concatenate([self.stream.read(s, n) for s, n in segments])
        docs = (np.repeat(np.arange(len(segments)), [n for _, n in segments])
                if self.doc_mask else None)
        return _row(chunk, docs)


def packed(stream: TokenStream, packing: str, max_length: int, lo: int, hi: int, seed: int = 0,
           doc_mask: bool = False):
    """The dataset of ``packing`` over ``[lo, hi)`` of ``stream``."""
    if packing not in PACKINGS:
        raise ValueError(f"--packing must be one of {', '.join(PACKINGS)}, got {packing!r}")
    if packing == "bestfit":
        return BestFitDataset(stream, max_length, lo, hi, seed, doc_mask)
    return WindowDataset(stream, max_length, lo, hi, doc_mask=doc_mask)
