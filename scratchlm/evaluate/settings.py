"""Evaluation settings as dataclasses (no torch import): ``scratchlm evaluate run``'s nested
flags (``--gsm8k.mode``, ``--lm.stride``, ...) and the training recipes' ``--eval.tasks``."""

from __future__ import annotations

from dataclasses import dataclass, field

from scratchlm.config import Count, NonNegFloat, NonNegInt


@dataclass
class LMSettings:
    max_length: Count | None = None  # tokens per window (default: the model's context)
    stride: int | None = None  # window step (default: max_length, no overlap)


@dataclass
class ChoiceSettings:
    shots: NonNegInt = 0  # few-shot examples before each question
    shot_file: str | None = None  # where shots come from (default: the task file itself)
    seed: int = 1234  # draws the shots


@dataclass
class Gsm8kSettings:
    mode: str = "chat"  # chat (the model's chat template) | fewshot (solved train problems)
    shots: NonNegInt = 5  # fewshot mode: solved problems before the question
    samples: Count = 1  # answers per problem; > 1 adds pass@k and maj@k (self-consistency)
    temperature: NonNegFloat = 0.0  # > 0 needed for samples > 1
    max_new_tokens: Count = 256  # tokens generated per response at most
    batch_size: Count = 8  # problems generated together


@dataclass
class EvalTasks:
    tasks: list[str] = field(default_factory=list)  # evaluate the final model: gsm8k, bpb:TEXT,
    # choice:FILE[:LAYOUT] (see scratchlm evaluate run); results in OUT/eval/RESULTS.md
    limit: Count | None = None  # only the first N examples (or characters) per task
