"""``LoraConfig``: the LoRA settings recipes nest as ``lora`` (``--lora.rank``), and
``GRPOSettings`` (``--grpo.*``, see ``rl/grpo.py``). No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from scratchlm.config import (Count, Fraction, NonNegFloat, NonNegInt, PositiveFloat, Probability,
                              Range)


@dataclass
class LoraConfig:
    rank: NonNegInt = 0  # 0: no LoRA (finetune the layers named by `trainable`)
    alpha: PositiveFloat = 16.0  # LoRA's scale numerator (see scaling)
    targets: list[str] = field(default_factory=lambda: ["all"])  # q k v out ff head lin, or all
    dropout: Fraction = 0.0  # dropout on the LoRA branch's input
    scaling: str = "book"  # book: alpha; peft: alpha / rank
    quantize_base: str | None = None  # "nf4": QLoRA, the adapted base weights in 4-bit NF4; "nf4-dq": double quantization
    save_merged: bool = False  # also write the whole merged model to final/ (otherwise final/
    # holds the adapter and the other trained tensors, loaded over the base; checkpoints/delta.py)


@dataclass
class GRPOSettings:
    group_size: Annotated[int, Range(2)] = 4  # completions per prompt (G)
    max_new_tokens: Count = 128  # a completion ends at end-of-text or here
    temperature: PositiveFloat = 1.0  # of the sampling, and of the log-probabilities trained on
    top_p: Probability | None = None  # nucleus sampling of the rollouts
    loss: str = "grpo"  # grpo: per-completion mean (sequence level) | dapo: token-level mean
    eps_low: Fraction = 0.2  # clip the ratio below at 1 - eps_low
    eps_high: NonNegFloat = 0.2  # and above at 1 + eps_high (0.28: DAPO's clip-higher)
    beta: NonNegFloat = 0.0  # weight of the KL penalty to the reference (LoRA off / a frozen copy)
    scale: str = "group"  # group: divide advantages by the group's std | none (Dr. GRPO)
    skip_zero_variance: bool = True  # groups whose rewards are all equal carry no gradient:
    # True leaves them out of the loss's average, False counts them (as zeros)
    rewards: str = "answer,format:0.2"  # name[:weight] list: answer, format, length, reward_model
    reward_model: str | None = None  # a `finetune reward` run's final/ for reward_model
    length_penalty: NonNegFloat = 0.001  # the length reward: -this per completion token
    packing: bool = False  # the update pass runs a group's completions side by side in one
    # row after their prompt, without padding (rl/grpo.py group_logprobs): the same values
    iterations: Count = 1  # optimizer steps on each rollout (trl's num_iterations; > 1: the
    # ratio to the sampling policy moves off 1 and the clip acts)
