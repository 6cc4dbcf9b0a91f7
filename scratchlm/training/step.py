"""One optimizer step: gradient accumulation with correct normalisation, clipping, update.

The loss of each micro-batch is a mean over its units, and the loss module says how many
units a batch holds (``batch_weight``: target tokens, examples or preference pairs; see
``training/losses.py``). Weighting each micro-batch by its share of all units in the step makes
k micro-batches give exactly the gradient of one k-times batch, also when padding makes the
counts differ. Under DDP the counts are summed across ranks and the loss multiplied by the
world size, because DDP averages gradients: N ranks give the gradient of one N-times batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from scratchlm.training.contract import hooks
from scratchlm.training.losses import batch_weight
from scratchlm.training.runtime import Runtime


@dataclass
class StepResult:
    loss: float  # mean loss over the step's valid targets (all ranks)
    grad_norm: float  # before clipping
    tokens: int  # units in the step (all ranks): target tokens, examples or pairs
    skipped: bool = False  # the loss or gradient was NaN/inf: no update was made


def to_device(x, device: torch.device):
    """A tensor, or a tuple/list of them (e.g. (ids, lengths)), moved to ``device``."""
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(t, device) for t in x)
    return x.to(device, non_blocking=True)


def _no_sync(model: nn.Module, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch."""
    if last:
        return nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    return nullcontext()


def train_step(
    loss_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    rt: Runtime,
    grad_clip: float | None = 1.0,
    scaler: torch.amp.GradScaler | None = None,
) -> StepResult:
    """``loss_module(inputs, targets)`` returns the mean loss of one micro-batch, and
    ``loss_module.batch_weight(inputs, targets)`` its number of units (``contract.py``). A step
    whose loss or gradient norm is not finite makes no update (``skipped``); under fp16 the
    grad scaler handles an infinite gradient itself (it skips the step and lowers its scale).
    A loss module's ``begin_step`` hook sees the whole step first."""
    begin = hooks(loss_module).begin_step
    if begin is not None:
        begin(micro_batches)
    counts = [batch_weight(loss_module, x, y).to(rt.device) for x, y in micro_batches]
    total = torch.stack(counts).sum().to(rt.device)
    if rt.distributed:
        dist.all_reduce(total)
    total_f = total.clamp(min=1).float()
    fsdp = hasattr(loss_module, "set_requires_gradient_sync")
    step_loss = torch.zeros((), device=rt.device)
    for i, ((x, y), n) in enumerate(zip(micro_batches, counts)):
        last = i == len(micro_batches) - 1
        if fsdp:
            loss_module.set_requires_gradient_sync(last)
        x, y = to_device(x, rt.device), to_device(y, rt.device)
        with _no_sync(loss_module, last), rt.autocast():
            loss = loss_module(x, y)
        weight = n / total_f
        scaled = loss * weight * rt.world_size
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        step_loss += loss.detach().float() * weight
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    if rt.distributed:
        dist.all_reduce(step_loss)  # each rank's share of the global mean
    loss_value, norm_value = step_loss.item(), float(norm)
    # the gradients are all-reduced, so every rank sees the same norm and loss and decides alike
    bad = not math.isfinite(loss_value) or (scaler is None and not math.isfinite(norm_value))
    if bad:
        pass  # no update: the weights and optimizer state stay as they were
    elif scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, norm_value, int(total.item()), skipped=bad)
