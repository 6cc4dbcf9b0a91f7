"""Next-token prediction data: the book's sliding-window dataset, and windows over token shards.

``GPTDataset`` holds one tokenized text in memory (fine for the-verdict or tinyshakespeare).
``ShardDataset`` reads windows from the memory-mapped ``.bin`` shards that ``data/shards.py``
writes, so a corpus of any size costs no RAM beyond the windows being read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from scratchlm.data.packing import TokenStream, document_split, packed


class GPTDataset(Dataset):
    """Chunks of ``max_length`` tokens taken every ``stride`` tokens; targets are the inputs
    shifted by one (the book's ``GPTDatasetV1``)."""

    def __init__(self, text_or_ids, tokenizer=None, max_length: int = 256, stride: int = 128):
        if isinstance(text_or_ids, str):
            if tokenizer is None:
                raise ValueError("a tokenizer is needed to encode text")
            ids = tokenizer.encode(text_or_ids, allowed_special="all")
        else:
            ids = list(text_or_ids)
        if max_length < 1 or stride < 1:
            raise ValueError("max_length and stride must be positive")
        if len(ids) < max_length + 1:
            raise ValueError(f"text has {len(ids)} tokens; need at least max_length + 1 = "
                             f"{max_length + 1}")
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.max_length, self.stride = max_length, stride
        self.starts = range(0, len(ids) - max_length, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.starts[i]
        chunk = self.ids[s : s + self.max_length + 1]
        return chunk[:-1], chunk[1:]


def create_dataloader(
    text_or_ids,
    tokenizer=None,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int | None = None,
) -> DataLoader:
    """The book's ``create_dataloader_v1``; ``tokenizer`` defaults to the fast GPT-2 one."""
    if tokenizer is None and isinstance(text_or_ids, str):
        from scratchlm.tokenizers import get_tokenizer

        tokenizer = get_tokenizer("gpt2")
    ds = GPTDataset(text_or_ids, tokenizer, max_length, stride)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, generator=gen)


class ShardDataset(Dataset):
    """Windows of ``max_length + 1`` tokens from memory-mapped shards written by ``prepare``.

    Window ``i`` starts at ``i * stride`` inside one shard (windows never straddle shards).
    Shuffle with the DataLoader's sampler for random windows; nothing is read until indexed.
    """

    def __init__(self, folder: str | Path, max_length: int, stride: int | None = None):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: run `scratchlm prepare` first")
        self.meta = json.loads(meta_path.read_text())
        self.dtype = np.dtype(self.meta["dtype"])
        self.max_length, self.stride = max_length, stride or max_length
        self.shards: list[np.memmap] = []
        self.offsets = [0]  # cumulative window counts
        for shard in self.meta["shards"]:
            arr = np.memmap(self.folder / shard["file"], dtype=self.dtype, mode="r")
            n = max(0, (len(arr) - max_length - 1) // self.stride + 1)
            self.shards.append(arr)
            self.offsets.append(self.offsets[-1] + n)
        if self.offsets[-1] == 0:
            raise ValueError(f"shards in {folder} hold fewer than max_length + 1 = "
                             f"{max_length + 1} tokens")

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        start = (i - self.offsets[k]) * self.stride
        chunk = torch.from_numpy(self.shards[k][start : start + self.max_length + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


@dataclass
class Corpus:
    """The training and validation rows of a corpus, and what was done to make them."""

    train: Dataset
    val: Dataset | None
    split: str  # how the validation set was chosen
    cropped_fraction: float = 0.0  # bestfit: tokens dropped to fill rows


def _encode_corpus(data: list[str], tokenizer, text_field: str, seed: int,
                   dedup: bool) -> TokenStream:
    """The documents of ``data`` encoded in memory, each closed by end-of-text: a text file as
    the book reads it (special-token strings in it count), any other document as plain text."""
    from scratchlm.data.documents import document_ids, mix_documents, resolve_source
    from scratchlm.data.mixtures import expand_mixtures

    sources = [resolve_source(d, progress=False) for d in expand_mixtures(data)]
    ids: list[int] = []
    starts: list[int] = []
    for doc in mix_documents(sources, text_field, seed=seed, dedup=dedup):
        starts.append(len(ids))
        ids.extend(document_ids(tokenizer, doc))
    return TokenStream([np.asarray(ids, dtype=np.int64)], np.asarray(starts or [0]))


def corpus_datasets(data: list[str], val_fraction: float, tokenizer, context: int, *,
                    packing: str = "concat", text_field: str = "text", seed: int = 0,
                    dedup: bool = False, val_data: list[str] | None = None,
                    doc_mask: bool = False) -> Corpus:
    """Training and validation rows of ``context`` tokens from ``data``: one folder of token
    shards (``scratchlm prepare``), or files, folders, globs, registered data set names and Hub
    data sets of any format ``data/documents.py`` reads (encoded in memory). Validation is
    ``val_data`` when given, else whole held-out documents (``document_split``); rows are packed
    as ``packing`` says (``data/packing.py``), their inputs (ids, segments) with ``doc_mask``."""
    def stream_of(items: list[str]) -> TokenStream:
        if len(items) == 1 and (Path(items[0]) / "meta.json").is_file():
            if dedup or text_field != "text":
                raise ValueError(f"{items[0]} holds token shards: --dedup and --text_field "
                                 "apply to documents being read (give them to prepare)")
            return TokenStream.from_folder(items[0])
        return _encode_corpus(items, tokenizer, text_field, seed, dedup)

    stream = stream_of(data)
    if val_data:
        val_stream = stream_of(val_data)
        cut, how, val_lo = len(stream), f"the file(s) {', '.join(val_data)}", 0
    else:
        cut, how = document_split(stream, val_fraction)
        val_stream, val_lo = stream, cut
    train = packed(stream, packing, context, 0, cut, seed, doc_mask)
    if len(train) == 0:
        raise ValueError(f"the training data holds {cut} tokens: fewer than one row of "
                         f"context + 1 = {context + 1}")
    val = packed(val_stream, packing, context, val_lo, len(val_stream), seed, doc_mask)
    return Corpus(train, val if len(val) else None, how,
                  getattr(train, "cropped_fraction", 0.0))


def text_datasets(data: list[str], val_fraction: float, tokenizer, context: int, **kw):
    """(train, val) of ``corpus_datasets`` (``val`` None when too short for one row)."""
    corpus = corpus_datasets(data, val_fraction, tokenizer, context, **kw)
    return corpus.train, corpus.val
