"""A batch sampler that can resume mid-epoch and splits batches across ranks.

Each epoch is a permutation from ``torch.Generator().manual_seed(seed + epoch)``, cut into global
batches of ``batch_size * world_size`` indices; rank ``r`` takes its ``r``-th slice, so N ranks
see exactly the samples one process sees with N times the batch. The position is set by the
training loop from what it has *consumed* (DataLoader workers read ahead of that).
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(self, n: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        if n < self.global_batch:
            raise ValueError(f"{n} samples cannot fill one batch of {batch_size} x "
                             f"{world_size} rank(s)")
        self.epoch, self.start = 0, 0

    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch  # the last partial batch is dropped

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.start = epoch, batch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def __iter__(self):
        order = self._order()
        for b in range(self.start, self.batches_per_epoch()):
            g = order[b * self.global_batch : (b + 1) * self.global_batch]
            yield g[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()
