"""``TrainConfig``: the settings of the shared training loop (``training/loop.py``) that every
recipe's config nests as ``train`` (``--train.lr``), and ``set_epochs``. No torch here, so a
command's flags and ``--help`` are built without it."""

from __future__ import annotations

from dataclasses import dataclass


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
    keep_last: int = 3  # checkpoints kept
    seed: int = 123
    device: str | None = None  # default: cuda if available, else cpu
    tensorboard: bool = True

    def __post_init__(self):
        if self.max_steps < 0:
            raise ValueError(f"TrainConfig.max_steps must be >= 0, got {self.max_steps}")
        for name in ("batch_size", "grad_accum_steps", "log_every", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError("TrainConfig.lr must be > 0 and min_lr >= 0")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"TrainConfig.warmup_fraction must be in [0, 1), got "
                             f"{self.warmup_fraction}")
        if self.initial_lr is not None and not 0.0 <= self.initial_lr <= self.lr:
            raise ValueError(f"TrainConfig.initial_lr must be in [0, lr={self.lr}], got "
                             f"{self.initial_lr}")
        if self.lr_scale <= 0 or self.lr_scale_steps < 0:
            raise ValueError("TrainConfig.lr_scale must be > 0 and lr_scale_steps >= 0")


def set_epochs(train: TrainConfig, epochs: int, num_examples: int, world_size: int = 1) -> int:
    """Set ``train.max_steps`` for ``epochs`` passes over ``num_examples`` (each step takes
    ``batch_size`` examples on each of ``world_size`` ranks) unless it was given (> 0: it
    replaces the epochs, as Hugging Face's ``max_steps`` does), and evaluate at least once per
    epoch; returns the steps per epoch."""
    steps_per_epoch = max(1, num_examples // (train.batch_size * world_size))
    if train.max_steps == 0:
        train.max_steps = epochs * steps_per_epoch
    train.eval_every = min(train.eval_every, steps_per_epoch)
    return steps_per_epoch
