"""Byte-level BPE training at corpus scale: the merges of ``BPETokenizer.train`` (bpe.py, the
readable reference), on hundreds of megabytes.

    texts (streamed) --worker processes: split at special tokens, GPT-2 regex, count-->
        word counts --nn/csrc/bpe_train.c: the merge loop--> merges --> BPETokenizer

1. Counting: documents are gathered into batches of a few megabytes, joined by end-of-text
   (a special token, which splits them apart as the reference splits its text), and each
   batch's words are counted in a worker process. Only the counts come back, so memory grows
   with the number of distinct words, not with the corpus.
2. Merging: the distinct words and their counts go to C, which runs the reference's loop (the
   highest count first, the smallest pair among equal counts, words rewritten left to right)
   with a hash table of pairs and a heap. Without a C compiler the reference's Python loop
   runs instead (the same merges, slower).

``tests/tokenizers/test_bpe_train.py`` checks that both give the reference's merges.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
import regex
from tqdm.auto import tqdm

from scratchlm.tokenizers.bpe import EOT, GPT2_PATTERN, BPETokenizer

BATCH_CHARS = 4 << 20  # characters of text per counting task

_pattern = None
_specials = None


def _init(pattern: str, specials: list[str]) -> None:
    global _pattern, _specials
    _pattern = regex.compile(pattern)
    _specials = regex.compile("|".join(regex.escape(t) for t in specials)) if specials else None


def _count(text: str) -> Counter:
    """Worker: the words of ``text`` (split at special tokens first) and their counts."""
    counts: Counter = Counter()
    for piece in (_specials.split(text) if _specials is not None else [text]):
        counts.update(_pattern.findall(piece))
    return counts


def _batches(texts: Iterable[str], sep: str) -> Iterator[str]:
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= BATCH_CHARS:
            yield sep.join(batch)
            batch, size = [], 0
    if batch:
        yield sep.join(batch)


def count_words(texts: Iterable[str], pattern: str = GPT2_PATTERN,
                special_tokens: Iterable[str] = (EOT,), workers: int | None = None,
                progress: bool = True) -> Counter:
    """Words (pre-tokenizer pieces) of the documents ``texts`` and their counts, counted in
    ``workers`` processes. Documents never join: each is its own text, as if separated by a
    special token."""
    specials = list(special_tokens)
    sep = specials[0] if specials else EOT
    if not specials:
        specials = [EOT]  # only to keep the documents apart
    workers = workers or os.cpu_count() or 1
    total: Counter = Counter()
    bar = tqdm(desc="counting words", unit="MB", unit_scale=False, disable=not progress)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with (ctx or mp).Pool(workers, _init, (pattern, specials)) as pool:
        for counts in pool.imap(_count, _shown(_batches(texts, sep), bar)):
            total.update(counts)
    bar.close()
    return total


def _shown(batches: Iterator[str], bar) -> Iterator[str]:
    """The batches, advancing the progress bar by their size as they are handed out."""
    for batch in batches:
        bar.update(round(len(batch) / 1e6, 1))
        yield batch


def _native():
    from scratchlm.nn.native import load

    lib = load("bpe_train")
    if lib is None:
        return None
    fn = lib.bpe_train
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [p, p, p, p, i64, i64, ctypes.c_int32, p]
    fn.restype = i64
    return fn


def merge_words(counts: Counter, n_merges: int) -> list[tuple[int, int, int]]:
    """The reference's merges of the words ``counts`` (on their UTF-8 bytes), from C."""
    fn = _native()
    if fn is None:
        return None
    encoded = [w.encode("utf-8", "surrogatepass") for w in counts]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    symbols = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int32)
    freqs = np.fromiter(counts.values(), dtype=np.int64, count=len(encoded))
    out = np.empty(2 * max(n_merges, 1), dtype=np.int32)
    done = fn(symbols.ctypes.data, offsets.ctypes.data, lengths.ctypes.data, freqs.ctypes.data,
              len(encoded), n_merges, 256, out.ctypes.data)
    if done < 0:
        raise MemoryError("BPE training ran out of memory")
    return [(int(out[2 * i]), int(out[2 * i + 1]), 256 + i) for i in range(done)]


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: Iterable[str] = (EOT,),
              pattern: str = GPT2_PATTERN, workers: int | None = None,
              progress: bool = True) -> BPETokenizer:
    """A byte-level BPE of ``vocab_size`` tokens learned from the documents ``texts`` (any
    iterable: a generator streams a corpus), the merges of ``BPETokenizer.train``."""
    special_tokens = list(special_tokens)
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise ValueError(f"vocab_size must be at least {256 + len(special_tokens)}")
    counts = count_words(texts, pattern, special_tokens, workers, progress)
    merges = merge_words(counts, n_merges)
    if merges is None:  # no C compiler: the reference's loop on the same counts
        return BPETokenizer.train_counts(counts, vocab_size, special_tokens, pattern, progress)
    specials = {tok: 256 + len(merges) + i for i, tok in enumerate(special_tokens)}
    return BPETokenizer(list(range(256)), merges, specials, pattern)
