"""``TrainConfig``: the settings of the shared training loop (``training/loop.py``) that every
recipe's config nests as ``train`` (``--train.lr``), and ``set_epochs``. No torch here, so a
command's flags and ``--help`` are built without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from scratchlm.config import (Count, Fraction, NonNegFloat, NonNegInt, PositiveFloat, Range,
                              check_bounds)


MUON_LR = 0.02  # Muon's default rate for the hidden matrices (nanochat's and the reference's)
DECAY_FRACTION = 0.2  # WSD's default share of the steps spent decaying (nanochat's warmdown)


@dataclass
class TrainConfig:
    max_steps: NonNegInt = 1000  # optimizer steps; 0 (finetuning recipes): from --epochs
    batch_size: Count = 8  # per process and micro-batch
    grad_accum_steps: Count = 1  # micro-batches per optimizer step
    lr: PositiveFloat = 4e-4  # peak learning rate
    min_lr: NonNegFloat = 4e-5  # the lowest rate of a decaying schedule
    schedule: str = "cosine"  # constant | cosine | linear | wsd (see training/schedule.py)
    decay_fraction: Annotated[float, Range(0, 1, low_open=True)] | None = None  # wsd: the share of max_steps spent decaying to min_lr at the end (default 0.2)
    warmup_steps: NonNegInt = 20  # steps of linear warm-up
    warmup_fraction: Fraction = 0.0  # > 0: the warm-up is this share of max_steps (replaces warmup_steps)
    initial_lr: float | None = None  # warm up from this rate (the book's appendix D), not from lr / warmup
    lr_scale: PositiveFloat = 1.0  # a temporary multiplier on the schedule's rate, from the start step ...
    lr_scale_steps: NonNegInt = 0  # ... for this many steps (e.g. 0.1 for 200 steps after --resume)
    weight_decay: NonNegFloat = 0.1  # AdamW's decoupled weight decay
    beta1: Fraction = 0.9  # Adam's first-moment decay
    beta2: Fraction = 0.95  # Adam's second-moment decay
    grad_clip: Annotated[float, Range(0, note="0 turns clipping off")] = 1.0  # max gradient norm; 0 disables clipping
    optimizer: str = "adamw"  # adamw | adamw8bit (CUDA, bitsandbytes) | sgd | muon (training/muon.py)
    muon_lr: PositiveFloat | None = None  # muon: the hidden matrices' peak rate (default 0.02); lr is then the AdamW rate of the embeddings, head, norms and biases
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA, fp32 on CPU)
    grad_checkpointing: bool = False  # recompute block activations in backward
    compile: bool = False  # torch.compile the transformer blocks
    fused_loss: bool = True  # fuse the output head with cross-entropy (no full logits)
    num_workers: NonNegInt = 0  # DataLoader worker processes
    pin_memory: bool = False  # page-locked batches for faster host-to-GPU copies
    strategy: str = "ddp"  # ddp | fsdp, when launched with torchrun
    log_every: Count = 10  # steps between metrics rows
    eval_every: Count = 100  # steps between evaluations (loss, samples, plots)
    eval_batches: Count = 10  # batches per evaluation
    save_every: Count = 500  # steps between checkpoints
    keep_last: NonNegInt = 3  # checkpoints kept while the run goes
    keep_checkpoints: bool = False  # keep checkpoints/ after the run ends well (to extend it
    # with --resume); otherwise final/ alone remains
    seed: int = 123  # random seed
    device: str | None = None  # default: cuda if available, else cpu
    tensorboard: bool = True  # write TensorBoard logs beside metrics.csv
    skip_nonfinite: NonNegInt = 0  # steps with a NaN/inf loss or gradient skipped before the run stops
    resume_check: bool = True  # refuse a --resume whose config differs where exactness needs it

    def __post_init__(self):
        check_bounds(self, "train.")  # also for a TrainConfig built in Python
        if self.decay_fraction is not None and self.schedule != "wsd":
            raise ValueError(f"--train.decay_fraction applies to --train.schedule wsd only, not "
                             f"{self.schedule!r}")
        if self.muon_lr is not None and self.optimizer != "muon":
            raise ValueError(f"--train.muon_lr applies to --train.optimizer muon only, not "
                             f"{self.optimizer!r}")
        if self.initial_lr is not None and not 0.0 <= self.initial_lr <= self.lr:
            raise ValueError(f"--train.initial_lr must be in [0, lr={self.lr}], got "
                             f"{self.initial_lr}")


    @property
    def muon_lr_value(self) -> float:
        return MUON_LR if self.muon_lr is None else self.muon_lr

    @property
    def decay_fraction_value(self) -> float:
        return DECAY_FRACTION if self.decay_fraction is None else self.decay_fraction


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
