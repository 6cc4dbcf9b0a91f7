"""Rows from documents: concat windows as the book cuts them, best-fit rows of whole documents
from position 0 (no padding), and a stream that reads across shard files."""

from __future__ import annotations

import numpy as np
import pytest

from scratchlm.data.packing import BestFitDataset, TokenStream, WindowDataset, best_fit_rows
from scratchlm.data.pretrain import GPTDataset


def _stream(lengths, parts=1, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50000, sum(lengths))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cut = np.array_split(ids, parts)
    return TokenStream(cut, starts), ids


def test_reads_cross_shard_files():
    stream, ids = _stream([50, 70, 30], parts=4)
    for start, n in [(0, 150), (30, 40), (37, 1), (149, 1), (10, 120)]:
        assert stream.read(start, n).tolist() == ids[start:start + n].tolist()


def test_concat_windows_are_the_books():
    stream, ids = _stream([500], parts=3)
    ours = WindowDataset(stream, 16)
    book = GPTDataset(ids.tolist(), max_length=16, stride=16)
    assert len(ours) == len(book)
    for i in (0, 5, len(book) - 1):
        assert [t.tolist() for t in ours[i]] == [t.tolist() for t in book[i]]


def test_best_fit_rows_hold_whole_documents_from_position_zero():
    lengths = list(np.random.default_rng(1).integers(3, 40, 400)) + [100, 61]
    stream, ids = _stream(lengths, parts=3)
    row = 33
    ds = BestFitDataset(stream, row - 1, seed=7)
    starts = set(stream.doc_starts.tolist())
    pieces = {s + k for s, n in zip(stream.doc_starts.tolist(), lengths) for k in range(0, n, row)}
    ends = {s + n for s, n in zip(stream.doc_starts.tolist(), lengths)}
    used = 0
    for i in range(len(ds)):
        segments = ds.rows[i]
        assert sum(n for _, n in segments) == row  # full rows, no padding
        for k, (s, n) in enumerate(segments):
            assert s in pieces  # a document (or a row-sized piece of a long one) starts here
            # whole, except the last segment of a row, which may be cropped
            assert s + n in ends | pieces or k == len(segments) - 1
        used += row
        x, y = ds[i]
        assert x.shape == (row - 1,) and y.tolist()[:-1] == x.tolist()[1:]
    assert starts <= pieces
    total = sum(lengths)
    assert ds.cropped_fraction == pytest.approx((total - used) / total)
    assert ds.cropped_fraction < 0.1
    # the plan is the seed's, and only the seed's (documents enter a window of 50 shuffled)
    assert BestFitDataset(stream, row - 1, seed=7).rows == ds.rows
    docs = stream.documents(0, len(stream))
    assert best_fit_rows(docs, row, seed=7, window=50) == best_fit_rows(docs, row, 7, 50)
    assert best_fit_rows(docs, row, seed=7, window=50) != best_fit_rows(docs, row, 8, 50)


def test_best_fit_prefers_the_longest_document_that_fits():
    rows, cropped = best_fit_rows([(0, 5), (5, 3), (8, 2), (10, 4)], 7, seed=0, window=10)
    assert all(sum(n for _, n in r) == 7 for r in rows)
    first = rows[0]
    assert first[0][1] == 5 and first[1][1] == 2  # 5 then the 2 that fills the row exactly
    assert cropped == 14 - 7 * len(rows)


def test_rows_carry_their_documents_for_the_mask():
    stream, ids = _stream([10, 25, 7, 40], parts=2)
    (x, seg), y = WindowDataset(stream, 16, doc_mask=True)[1]  # tokens 16..32
    assert x.tolist() == ids[16:32].tolist() and y.tolist() == ids[17:33].tolist()
    assert seg.tolist() == [2] * 16  # tokens 16..31 all lie in the second document (10..34)
    (x, seg), _ = WindowDataset(stream, 16, doc_mask=True)[0]
    assert seg.tolist() == [1] * 10 + [2] * 6
    ds = BestFitDataset(stream, 15, seed=0, doc_mask=True)
    for i in range(len(ds)):
        (x, seg), _ = ds[i]
        lengths = [n for _, n in ds.rows[i]]
        want = sum(([k] * n for k, n in enumerate(lengths)), [])[:15]  # the inputs of 16
        assert seg.tolist() == want
