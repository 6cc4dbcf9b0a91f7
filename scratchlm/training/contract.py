"""The training contract: what ``fit`` (``loop.py``) and ``train_step`` (``step.py``) ask of a
loss module, named in one place.

Required (``LossModule``):

    loss_module(inputs, targets) -> the mean loss over the units of one micro-batch (0-d)
    loss_module.batch_weight(inputs, targets) -> its number of units: target tokens for language
        models and taggers, examples for classifiers, preference pairs for DPO and reward models

``train_step`` weights each micro-batch (and each rank) by ``batch_weight``, so k micro-batches
give the gradient of one k-times batch and N ranks that of one N-times batch; evaluation uses it
for the true mean over uneven batches and ranks.

Optional: the fields of ``LossHooks``, each with the value assumed when a module does not
define it. ``hooks(loss_module)`` reads them (through a DDP wrapper) as one dataclass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class LossModule(Protocol):
    def __call__(self, inputs, targets) -> Any: ...

    def batch_weight(self, inputs, targets) -> Any: ...


@dataclass(frozen=True)
class LossHooks:
    batch_repeats: int = 1  # optimizer steps on one batch (GRPO's iterations per rollout)
    has_eval_loss: bool = True  # False: no loss on held-out batches (GRPO measures accuracy)
    is_cross_entropy: bool = False  # a mean token cross-entropy: its perplexity is reported
    unit: str = "tokens"  # what batch_weight counts (the loss plot's top axis)
    # begin_step(micro_batches): sees the whole step before any micro-batch (GRPO samples
    # the completions of all of them in one batch there)
    begin_step: Callable[[list], None] | None = None
    step_metrics: Callable[[], dict] | None = None  # statistics of the step just taken
    # checkpoint_state() -> a JSON-able value kept between steps (None: nothing), and its
    # inverse load_checkpoint_state(value): saved with each checkpoint, so resume stays exact
    checkpoint_state: Callable[[], Any] | None = None
    load_checkpoint_state: Callable[[Any], None] | None = None


def unwrap(loss_module: nn.Module) -> nn.Module:
    """The loss module inside a DDP wrapper (which keeps it as ``.module``)."""
    return getattr(loss_module, "module", loss_module)


def hooks(loss_module: nn.Module) -> LossHooks:
    """The optional hooks ``loss_module`` defines, the defaults for the others."""
    inner = unwrap(loss_module)
    return LossHooks(**{f.name: getattr(inner, f.name) for f in fields(LossHooks)
                        if hasattr(inner, f.name)})
