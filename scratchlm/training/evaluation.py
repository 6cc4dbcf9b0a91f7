"""Evaluation during training: mean loss over a few batches, and perplexity. (Samples are
the recipe's: generation sits above training.)"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from scratchlm.training.losses import batch_weight
from scratchlm.training.runtime import Runtime
from scratchlm.training.step import to_device


@torch.no_grad()
def evaluate_loss(loss_module: nn.Module, batches: Iterable, rt: Runtime,
                  max_batches: int | None = None) -> float:
    """The mean loss over every unit (token, example, pair) of ``batches``, on all ranks
    together: each batch's mean loss weighted by its ``batch_weight``, so uneven batches and
    uneven shards give the true mean (the book's ``calc_loss_loader`` averages batch means,
    the same when every batch is full). Every rank takes part in the one all-reduce, also a
    rank whose shard is empty; NaN when no rank had anything."""
    was_training = loss_module.training
    loss_module.eval()
    acc = torch.zeros(2, device=rt.device, dtype=torch.float64)  # [sum of loss * weight, weight]
    for i, (x, y) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x, y = to_device(x, rt.device), to_device(y, rt.device)
        with rt.autocast():
            loss = loss_module(x, y).double()
        w = batch_weight(loss_module, x, y).to(rt.device, torch.float64)
        if w > 0:
            acc += torch.stack([loss * w, w])
    loss_module.train(was_training)
    if rt.distributed:
        dist.all_reduce(acc)
    return (acc[0] / acc[1]).item() if acc[1] > 0 else float("nan")


def dataset_loss(loss_module: nn.Module, dataset, collate, rt: Runtime, batch_size: int) -> float:
    """The mean loss over a whole dataset (every rank reads all of it)."""
    from torch.utils.data import DataLoader

    return evaluate_loss(loss_module, DataLoader(dataset, batch_size=batch_size,
                                                 collate_fn=collate), rt)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
