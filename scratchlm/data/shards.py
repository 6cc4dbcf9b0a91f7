"""Tokenize large corpora into memory-mapped token shards (``scratchlm prepare``).

Output folder::

    shard_00000.bin   raw token ids, uint16 when the vocabulary fits, else uint32
    shard_00001.bin
    docs.bin          where each document starts: uint64 offsets into the shards' token stream
    meta.json         tokenizer, vocab_size, dtype, eos_id, total tokens and documents,
                      per-shard count + sha256

Corpora in JSON Lines (plain, ``.gz``, ``.zst``), JSON or parquet (``data/documents.py``) are
read a document at a time; each document is encoded as plain text (a ``<|endoftext|>`` written
in it stays text) and followed by the tokenizer's end-of-text id (or preceded by its BOS when it
has no end-of-text). Batches of documents are tokenized in worker processes, a bounded number in
flight, so memory stays flat whatever the corpus size.

Text files (when every input is one, unmixed) are one document each, read as the book reads
them (special-token strings in them count): each is read in blocks that are cut only where
``non-space \\n non-space`` stands, so tokenizing the blocks separately gives exactly the ids of
tokenizing the whole file (the GPT-2 regex never joins across such a newline), and an
end-of-text id follows each file. Invalid UTF-8 is reported with the file and byte offset.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import regex
from tqdm.auto import tqdm

from scratchlm.data.text_file import DataFileError, utf8_error

BLOCK = 1 << 20  # bytes of text per task
_CUT = regex.compile(rb"[\x21-\x7e]\n[\x21-\x7e]")  # a safe place to split (see module doc)




def plan_blocks(path: str | Path, block_size: int = BLOCK) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` byte ranges of about ``block_size`` covering the file, each cut at
    a safe newline (only the bytes near each cut are read here)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise DataFileError(f"{path}: file is empty")
    start = 0
    with open(path, "rb") as f:
        while start < size:
            end = start + block_size
            window = 1 << 14
            while end < size:
                f.seek(end)
                m = _CUT.search(f.read(window))
                if m:
                    end += m.start() + 2  # just after the newline
                    break
                window *= 2
                if end + window // 2 >= size:
                    end = size
            end = min(end, size)
            yield start, end
            start = end


def read_block(path: str | Path, start: int, end: int) -> str:
    """The text of bytes ``[start, end)``; invalid UTF-8 is reported with its file offset."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before, left = 0, start
        with open(path, "rb") as f:  # only now: count the lines before this block
            while left > 0 and (chunk := f.read(min(1 << 20, left))):
                before, left = before + chunk.count(b"\n"), left - len(chunk)
        raise DataFileError(utf8_error(path, data, e, first_line=before + 1)) from None


def read_blocks(path: str | Path, block_size: int = BLOCK) -> Iterator[tuple[str, int]]:
    """Yield ``(text, n_bytes)`` blocks of about ``block_size`` bytes, cut at safe newlines."""
    for start, end in plan_blocks(path, block_size):
        yield read_block(path, start, end), end - start


_worker_tok = None


def _init_worker(tokenizer_name: str) -> None:
    global _worker_tok
    from scratchlm.tokenizers import get_tokenizer

    _worker_tok = get_tokenizer(tokenizer_name)


def _encode_range(task: tuple[str, int, int, str]) -> tuple[np.ndarray, int]:
    """Worker: read, decode and tokenize one block; returns (ids in the shard dtype, bytes)."""
    path, start, end, dtype = task
    text = read_block(path, start, end)
    if hasattr(_worker_tok, "encode_to_numpy"):
        ids = _worker_tok.encode_to_numpy(text, allowed_special="all")
    else:
        ids = np.asarray(_worker_tok.encode(text, allowed_special="all"), dtype=np.uint32)
    return ids.astype(dtype), end - start


def ordered_map(executor: Executor, fn, items: Iterable, window: int) -> Iterator:
    """``executor.map`` that keeps at most ``window`` tasks in flight, so a corpus larger than
    memory streams through (``Executor.map`` and ``Pool.imap`` read their whole input first)."""
    pending: deque = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _encode_task(task: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Worker: ("units", units, field, dtype) read and encoded here, or ("docs", documents,
    None, dtype) read by the parent -> (ids of the documents in the shards' dtype, each closed
    by end-of-text or opened by BOS; their lengths)."""
    ids, lengths = _encode_documents(task)
    return ids.astype(task[3], copy=False), lengths


def _encode_documents(task: tuple) -> tuple[np.ndarray, np.ndarray]:
    """A text file read whole is encoded as the book does (its special-token strings count);
    any other document as plain text."""
    from scratchlm.data.documents import Document, TextFile, document_ids

    if task[0] == "units":
        units, field = task[1], task[2]
        if not any(isinstance(u, TextFile) for u in units):
            texts = [t for u in units for t in u.texts(field)]
            joined = _encode_joined(texts)
            if joined is not None:
                return joined
            docs = [Document(t, "") for t in texts]
        else:
            docs = [d for unit in units for d in unit.documents(field)]
    else:
        docs = task[1]
    if not any(d.whole_file for d in docs):
        joined = _encode_joined([d.text for d in docs])
        if joined is not None:
            return joined
    parts = [np.asarray(document_ids(_worker_tok, d), dtype=np.uint32) for d in docs]
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    return (np.concatenate(parts) if parts else np.empty(0, np.uint32)), lengths


def _encode_joined(texts: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """tiktoken encodes the text between special tokens piece by piece, so the documents
    joined by end-of-text and encoded in one call give each document's ids followed by
    end-of-text, at the speed of one long text (many short calls cost 25% more). None where
    that does not hold: another tokenizer, or a document that holds the end-of-text string
    itself."""
    enc, eos = getattr(_worker_tok, "encoding", None), _worker_tok.eos_id
    eot = next((t for t, i in getattr(_worker_tok, "special_tokens", {}).items() if i == eos),
               None)
    if enc is None or eot is None or not texts or any(eot in t for t in texts):
        return None
    ids = enc.encode_to_numpy(eot.join(texts) + eot, allowed_special={eot})
    ends = np.flatnonzero(ids == eos) + 1
    if len(ends) != len(texts):  # an ordinary piece encoded to the end-of-text id: never here
        return None
    return ids, np.diff(ends, prepend=0)


def _batches(docs, max_chars: int = BLOCK) -> Iterator[list]:
    """Documents in lists of about ``max_chars`` characters (one task for a worker)."""
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def prepare(
    data: Sequence[str | Path],
    out_dir: str | Path,
    tokenizer: str = "gpt2",
    shard_tokens: int = 100_000_000,
    workers: int | None = None,
    progress: bool = True,
    text_field: str = "text",
    seed: int = 0,
    dedup: bool = False,
) -> dict:
    """Tokenize the corpus ``data`` (files, folders, globs, registered names, Hub data sets;
    ``path:weight`` mixes, see ``data/documents.py``) into shards under ``out_dir``; returns
    the meta dict."""
    from scratchlm.data.documents import check_text_field, kind, resolve_source
    from scratchlm.data.mixtures import expand_mixtures
    from scratchlm.tokenizers import get_tokenizer

    if not data:
        raise DataFileError("no input files given")
    tok = get_tokenizer(tokenizer)  # fail early on a bad name, and learn the vocabulary
    sources = [resolve_source(d, progress=progress) for d in expand_mixtures(data)]
    files = [f for src in sources for f in src.files]
    check_text_field(sources, text_field)
    as_text = (all(kind(f) == "text" for f in files) and not dedup
               and all(src.weight is None for src in sources))
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    shards: list[dict] = []
    writer = _ShardWriter(out, dtype, shard_tokens, shards)
    bar = tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True,
               desc="tokenizing", disable=not progress)
    # Worker processes tokenize, so the parent only reads (or plans the cuts) and writes.
    # (tiktoken releases the GIL, but threads sharing one encoder ran at half the speed of
    # processes here.)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(tokenizer,))
    with executor:
        if as_text:
            _text_files(executor, files, writer, tok, dtype, bar, workers)
        else:
            _documents(executor, sources, writer, dtype, bar, workers, text_field, seed, dedup)
    bar.close()
    writer.close()
    meta = {
        "tokenizer": tokenizer,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "dtype": np.dtype(dtype).name,
        "num_tokens": sum(s["num_tokens"] for s in shards),
        "num_documents": writer.documents,
        "docs": "docs.bin",
        "files": [str(f) for f in files],
        "shards": shards,
    }
    tmp = out / "meta.json.part"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / "meta.json")
    return meta


def _text_files(executor, files, writer, tok, dtype, bar, workers: int) -> None:
    dtype_name = np.dtype(dtype).name
    for path in files:
        writer.start_document()
        tasks = ((str(path), a, b, dtype_name) for a, b in plan_blocks(path))
        for ids, n_bytes in ordered_map(executor, _encode_range, tasks, window=2 * workers):
            writer.write(ids)
            bar.update(n_bytes)
        if tok.eos_id is not None:
            writer.write(np.asarray([tok.eos_id], dtype=dtype))


def _documents(executor, sources, writer, dtype, bar, workers, text_field, seed, dedup):
    """Documents into shards. Workers read the files (JSON blocks, parquet row groups, text
    files) and encode them; a weighted mixture or ``dedup`` needs every document in the
    parent, which reads them and sends them in batches."""
    from scratchlm.data.documents import mix_documents, work_units

    if dedup or any(src.weight is not None for src in sources):
        docs = mix_documents(sources, text_field, seed=seed, dedup=dedup, progress=bar.update)
        tasks = (("docs", batch, None, dtype) for batch in _batches(docs))
    else:
        tasks = (("units", [unit], text_field, dtype) for src in sources for path in src.files
                 for unit in work_units(path, text_field, bar.update))
    errors: list[DataFileError] = []

    def until_an_error(tasks):
        try:
            yield from tasks
        except DataFileError as e:
            errors.append(e)

    try:
        for ids, lengths in ordered_map(executor, _encode_task, until_an_error(tasks),
                                        window=2 * workers):
            writer.write_documents(ids.astype(dtype, copy=False), lengths)
    except DataFileError:
        writer.close()  # the documents before the bad one are written and kept; no meta.json
        raise  # says the folder is whole
    if errors:
        writer.close()
        raise errors[0]


class _ShardWriter:
    """Appends ids to ``shard_NNNNN.bin`` files of at most ``shard_tokens`` ids each, written
    under a ``.part`` name and renamed when full; records each finished shard in ``shards``."""

    def __init__(self, folder: Path, dtype, shard_tokens: int, shards: list[dict]):
        if shard_tokens < 1:
            raise ValueError("shard_tokens must be positive")
        self.folder, self.dtype, self.cap, self.shards = folder, dtype, shard_tokens, shards
        self.f = None
        self.written = 0  # tokens in all shards so far
        self.documents = 0
        self.docs = open(folder / "docs.bin.part", "wb")  # uint64 start of each document

    def start_document(self) -> None:
        self.docs.write(np.asarray([self.written], dtype=np.uint64).tobytes())
        self.documents += 1

    def write_documents(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        starts = self.written + np.concatenate([[0], np.cumsum(lengths[:-1])])
        self.docs.write(starts.astype(np.uint64).tobytes())
        self.documents += len(lengths)
        self.write(ids)

    def _open(self) -> None:
        self.name = f"shard_{len(self.shards):05d}.bin"
        self.f = open(self.folder / (self.name + ".part"), "wb")
        self.count, self.hash = 0, hashlib.sha256()

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.f is None:
                self._open()
            take = ids[: self.cap - self.count].astype(self.dtype, copy=False)
            data = take.tobytes()
            self.f.write(data)
            self.hash.update(data)
            self.count += len(take)
            self.written += len(take)
            ids = ids[len(take):]
            if self.count == self.cap:
                self._finish()

    def _finish(self) -> None:
        self.f.close()
        os.replace(self.folder / (self.name + ".part"), self.folder / self.name)
        self.shards.append({"file": self.name, "num_tokens": self.count,
                            "sha256": self.hash.hexdigest()})
        self.f = None

    def close(self) -> None:
        if self.f is not None:
            self._finish()
        self.docs.close()
        os.replace(self.folder / "docs.bin.part", self.folder / "docs.bin")
