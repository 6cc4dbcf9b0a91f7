"""Next-token prediction data: the book's sliding-window dataset, and windows over token shards.

``GPTDataset`` holds one tokenized text in memory (fine for the-verdict or tinyshakespeare).
``ShardDataset`` reads windows from the memory-mapped ``.bin`` shards that ``data/shards.py``
writes, so a corpus of any size costs no RAM beyond the windows being read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from scratchlm.data.text_file import read_text


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


def text_datasets(data: list[str], val_fraction: float, tokenizer, context: int):
    """(train, val) datasets of (inputs, targets) windows of ``context`` tokens from text files
    or registered data set names (``downloads/sources.py``), or from one shard folder."""
    from torch.utils.data import Subset

    from scratchlm.downloads.sources import SOURCES, fetch
    if len(data) == 1 and (Path(data[0]) / "meta.json").is_file():
        ds = ShardDataset(data[0], context)
        n_val = int(len(ds) * val_fraction)
        return Subset(ds, range(len(ds) - n_val)), Subset(ds, range(len(ds) - n_val, len(ds)))
    ids: list[int] = []
    for item in data:
        path = fetch(item) if item in SOURCES and not Path(item).exists() else Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"data {item!r}: no such file or registered data set")
        text = read_text(path)
        if not text.strip():
            raise ValueError(f"{path}: file is empty")
        ids.extend(tokenizer.encode(text, allowed_special="all"))
        if tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
    split = int(len(ids) * (1 - val_fraction))
    train = GPTDataset(ids[:split], max_length=context, stride=context)
    val_ids = ids[split:]
    val = GPTDataset(val_ids, max_length=context, stride=context) \
        if len(val_ids) > context else None
    return train, val
