"""Learning-rate schedules as pure functions of the step (nothing to save for resume).

``lr_at(step, ...)`` is the rate for the update that takes the model from ``step`` to
``step + 1``. All schedules warm up linearly over ``warmup_steps`` (0 disables the warm-up):
from ``lr / warmup_steps`` to ``lr``, or, with ``initial_lr``, as the book's appendix D does,
``initial_lr + step * (lr - initial_lr) / warmup_steps``. After the warm-up:

- ``constant``: ``lr`` after warm-up;
- ``cosine`` (the book's appendix D): half a cosine from ``lr`` down to ``min_lr`` at
  ``max_steps``;
- ``linear``: a straight line from ``lr`` down to ``min_lr`` at ``max_steps``;
- ``wsd`` (warmup-stable-decay, nanochat's "warmdown"): ``lr`` until the last
  ``decay_fraction`` of ``max_steps``, then a straight line down to ``min_lr`` at ``max_steps``.
  The stable phase does not depend on the horizon, so a run can be extended (or a checkpoint
  of the stable phase decayed) without changing the steps already taken.
"""

from __future__ import annotations

import math

from scratchlm.training.config import DECAY_FRACTION

SCHEDULES = ("constant", "cosine", "linear", "wsd")


def lr_at(step: int, *, schedule: str, lr: float, max_steps: int, warmup_steps: int = 0,
          min_lr: float = 0.0, initial_lr: float | None = None,
          decay_fraction: float = DECAY_FRACTION) -> float:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        if initial_lr is not None:
            return initial_lr + step * (lr - initial_lr) / warmup_steps
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "wsd":
        decay_start = max(warmup_steps, max_steps - round(decay_fraction * max_steps))
        if step < decay_start:
            return lr
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return lr + (min_lr - lr) * progress
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr + (min_lr - lr) * progress


def warmup_steps_of(cfg) -> int:
    """The warm-up length of a ``TrainConfig``: ``warmup_fraction`` of ``max_steps`` when set
    (the book's ``int(0.2 * total_steps)``), else ``warmup_steps``."""
    if cfg.warmup_fraction > 0:
        return int(cfg.warmup_fraction * cfg.max_steps)
    return cfg.warmup_steps
