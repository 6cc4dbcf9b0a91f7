"""Learning-rate schedules as pure functions of the step (nothing to save for resume).

``lr_at(step, ...)`` is the rate for the update that takes the model from ``step`` to
``step + 1``. All schedules warm up linearly over ``warmup_steps`` (0 disables the warm-up):

- ``constant``: ``lr`` after warm-up;
- ``cosine`` (the book's appendix D): half a cosine from ``lr`` down to ``min_lr`` at
  ``max_steps``;
- ``linear``: a straight line from ``lr`` down to ``min_lr`` at ``max_steps``.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear")


def lr_at(step: int, *, schedule: str, lr: float, max_steps: int, warmup_steps: int = 0,
          min_lr: float = 0.0) -> float:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr + (min_lr - lr) * progress
