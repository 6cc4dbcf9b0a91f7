"""Evaluation during training: mean loss over a few batches, and perplexity. (Samples are
the recipe's: generation sits above training.)"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from scratchlm.training.runtime import Runtime
from scratchlm.training.step import to_device


@torch.no_grad()
def evaluate_loss(loss_module: nn.Module, batches: Iterable, rt: Runtime,
                  max_batches: int | None = None) -> float:
    """Mean of the batch losses (the book's ``calc_loss_loader``), averaged across ranks."""
    was_training = loss_module.training
    loss_module.eval()
    total, n = torch.zeros((), device=rt.device), 0
    for i, (x, y) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        with rt.autocast():
            total += loss_module(to_device(x, rt.device), to_device(y, rt.device)).float()
        n += 1
    loss_module.train(was_training)
    mean = rt.all_reduce_mean(total / max(n, 1))
    return mean.item() if n else float("nan")


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
