"""``TrainConfig``: the settings of the shared training loop (``training/loop.py``) that every
recipe's config nests as ``train`` (``--train.lr``), and ``set_epochs``. No torch here, so a
command's flags and ``--help`` are built without it."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps; 0 (finetuning recipes): from --epochs
    batch_size: int = 8  # per process and micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 4e-4
    min_lr: float = 4e-5
    schedule: str = "cosine"  # constant | cosine | linear (see training/schedule.py)
    warmup_steps: int = 20
    warmup_fraction: float = 0.0  # > 0: the warm-up is this share of max_steps (replaces warmup_steps)
    initial_lr: float | None = None  # warm up from this rate (the book's appendix D), not from lr / warmup
    lr_scale: float = 1.0  # a temporary multiplier on the schedule's rate, from the start step ...
    lr_scale_steps: int = 0  # ... for this many steps (e.g. 0.1 for 200 steps after --resume)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    optimizer: str = "adamw"  # adamw | adamw8bit (CUDA, bitsandbytes) | sgd
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA, fp32 on CPU)
    grad_checkpointing: bool = False  # recompute block activations in backward
    compile: bool = False  # torch.compile the transformer blocks
    fused_loss: bool = True  # fuse the output head with cross-entropy (no full logits)
    num_workers: int = 0  # DataLoader worker processes
    pin_memory: bool = False  # page-locked batches for faster host-to-GPU copies
    strategy: str = "ddp"  # ddp | fsdp, when launched with torchrun
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 10
    save_every: int = 500
    keep_last: int = 3  # checkpoints kept while the run goes
    keep_checkpoints: bool = False  # keep checkpoints/ after the run ends well (to extend it
    # with --resume); otherwise final/ alone remains
    seed: int = 123
    device: str | None = None  # default: cuda if available, else cpu
    tensorboard: bool = True
    skip_nonfinite: int = 0  # steps with a NaN/inf loss or gradient skipped before the run stops
    resume_check: bool = True  # refuse a --resume whose config differs where exactness needs it

    def __post_init__(self):
        for f in fields(self):  # a NaN or an infinity is never a setting
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--train.{f.name} must be a finite number, got {value}")
        at_least(self, "max_steps", 0)
        for name in ("batch_size", "grad_accum_steps", "log_every", "eval_every", "save_every",
                     "eval_batches"):
            at_least(self, name, 1)
        for name in ("warmup_steps", "keep_last", "num_workers", "lr_scale_steps",
                     "skip_nonfinite", "min_lr", "weight_decay", "grad_clip"):
            at_least(self, name, 0, " (0 turns clipping off)" if name == "grad_clip" else "")
        if self.lr <= 0:
            raise ValueError(f"--train.lr must be > 0, got {self.lr}")
        for name in ("warmup_fraction", "beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--train.{name} must be in [0, 1), got {value}")
        if self.initial_lr is not None and not 0.0 <= self.initial_lr <= self.lr:
            raise ValueError(f"--train.initial_lr must be in [0, lr={self.lr}], got "
                             f"{self.initial_lr}")
        if self.lr_scale <= 0:
            raise ValueError(f"--train.lr_scale must be > 0, got {self.lr_scale}")


def at_least(cfg, name: str, low: float, note: str = "") -> None:
    """Refuse ``cfg.<name> < low``, naming the key and the value."""
    value = getattr(cfg, name)
    if value < low:
        raise ValueError(f"--train.{name} must be >= {low}{note}, got {value}")


def set_epochs(train: TrainConfig, epochs: int, num_examples: int, world_size: int = 1) -> int:
    """Set ``train.max_steps`` for ``epochs`` passes over ``num_examples`` (each step takes
    ``batch_size`` examples on each of ``world_size`` ranks) unless it was given (> 0: it
    replaces the epochs, as Hugging Face's ``max_steps`` does), and evaluate at least once per
    epoch and four times per run (a validation curve, not one dot); returns the steps per
    epoch."""
    steps_per_epoch = max(1, num_examples // (train.batch_size * world_size))
    if train.max_steps == 0:
        train.max_steps = epochs * steps_per_epoch
    train.eval_every = min(train.eval_every, steps_per_epoch, max(1, train.max_steps // 4))
    return steps_per_epoch
