"""Rewards for reinforcement learning: functions of (prompt, completion, reference) -> float,
checked answers first (the GSM8K verifier of ``gsm8k.py``), a learned reward model for RLHF.

    reward = build_reward("answer,format:0.2", tokenizer)
    reward("What is 2+3?", "2+3 = 5\\n#### 5", "5")  ->  1.2

A spec is a comma list of ``name[:weight]`` (weight 1 when left out), summed:

    answer        1 when the completion's final number (``final_number``) equals the reference's
    format        1 when the completion ends in a final-answer line ``#### N``, with any
                  ``<think>`` opened before closed before it
    length        minus ``length_penalty`` per completion token (a brevity pressure)
    reward_model  the score of a ``scratchlm finetune reward`` model (``reward_model`` folder):
                  RLHF, with the policy gradient of GRPO in place of PPO's value network

``score_all`` calls the function for every completion and names the example when a function
raises or returns something that is not a finite number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from scratchlm.evaluate.gsm8k import final_number, normalize_number

Reward = Callable[[str, str, str], float]
_FINAL_LINE = re.compile(r"####\s*-?\$?\s?\d[\d,]*(?:\.\d+)?\s*$")


def answer_reward(prompt: str, completion: str, reference: str) -> float:
    got = final_number(completion)
    return float(got is not None and got == normalize_number(reference))


def format_reward(prompt: str, completion: str, reference: str) -> float:
    text = completion.strip()
    lines = text.splitlines()
    if not lines or not _FINAL_LINE.fullmatch(lines[-1].strip()):
        return 0.0
    if "<think>" in text and text.rfind("</think>") < text.rfind("<think>"):
        return 0.0  # thinking opened and never closed
    return 1.0


def length_reward(tokenizer, penalty: float) -> Reward:
    def length(prompt: str, completion: str, reference: str) -> float:
        return -penalty * len(tokenizer.encode(completion))
    return length


def reward_model_reward(folder: str, device="cpu") -> Reward:
    from scratchlm.finetune.reward import RewardScorer

    scorer = RewardScorer.load(folder, device)

    def reward_model(prompt: str, completion: str, reference: str) -> float:
        return scorer(prompt, [completion])[0]
    # many completions at once: one reward-model forward per batch, not per completion
    reward_model.batch = lambda prompts, completions, references: scorer.pairs(
        list(prompts), list(completions))
    return reward_model


NAMES = ("answer", "format", "length", "reward_model")


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """"answer,format:0.2" -> [("answer", 1.0), ("format", 0.2)]; unknown names refused."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight = part.partition(":")
        if name not in NAMES:
            raise ValueError(f"unknown reward {name!r}: {', '.join(NAMES)} (name[:weight], "
                             "comma-separated)")
        out.append((name, _weight(part, weight)))
    if not out:
        raise ValueError("no reward given (--grpo.rewards answer,format:0.2, ...)")
    return out


def _weight(part: str, text: str) -> float:
    """The weight of one ``name:weight`` term; 1 when left out. NaN or inf are refused: one
    such weight turns every summed reward, and so every advantage, into NaN."""
    if not text:
        return 1.0
    try:
        weight = float(text)
    except ValueError:
        raise ValueError(f"reward {part!r}: the weight is not a number") from None
    if not math.isfinite(weight):
        raise ValueError(f"reward {part!r}: the weight must be a finite number, got {text!r}")
    return weight


def build_reward(spec: str, tokenizer=None, length_penalty: float = 0.001,
                 reward_model: str | None = None, device="cpu") -> Reward:
    """The weighted sum of the spec's rewards as one function."""
    parts: list[tuple[str, float, Reward]] = []
    for name, weight in parse_spec(spec):
        if name == "answer":
            fn = answer_reward
        elif name == "format":
            fn = format_reward
        elif name == "length":
            if tokenizer is None:
                raise ValueError("the length reward needs the tokenizer")
            fn = length_reward(tokenizer, length_penalty)
        else:
            if not reward_model:
                raise ValueError("the reward_model reward needs --grpo.reward_model FOLDER (a "
                                 "`scratchlm finetune reward` run's final/)")
            fn = reward_model_reward(reward_model, device)
        parts.append((name, weight, fn))

    def total(prompt: str, completion: str, reference: str) -> float:
        return sum(w * _checked(fn(prompt, completion, reference), name)
                   for name, w, fn in parts)

    def batch(prompts, completions, references) -> list[float]:
        sums = [0.0] * len(prompts)
        for name, w, fn in parts:
            many = getattr(fn, "batch", None)
            values = many(prompts, completions, references) if many is not None else [
                fn(p, c, r) for p, c, r in zip(prompts, completions, references)]
            sums = [s + w * _checked(v, name) for s, v in zip(sums, values, strict=True)]
        return sums
    total.batch = batch
    return total


def _checked(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"the {name} reward returned {value!r}, not a number")
    if not math.isfinite(value):
        raise TypeError(f"the {name} reward returned {value}, not a finite number")
    return float(value)


def score_all(fn: Reward, prompts: Sequence[str], completions: Sequence[str],
              references: Sequence[str], names: Sequence[str] | None = None) -> list[float]:
    """``fn`` on each (prompt, completion, reference); an error names the example. A reward
    with a ``batch`` method (a reward model's) scores them all in one call; if that fails,
    they are scored one by one, so that the error names the example."""
    many = getattr(fn, "batch", None)
    if many is not None:
        try:
            return [_checked(v, getattr(fn, "__name__", "reward"))
                    for v in many(prompts, completions, references)]
        except Exception:  # noqa: BLE001 (scored again one by one below, which names it)
            pass
    out = []
    for i, (p, c, r) in enumerate(zip(prompts, completions, references)):
        where = names[i] if names is not None else f"example {i}"
        try:
            out.append(_checked(fn(p, c, r), getattr(fn, "__name__", "reward")))
        except Exception as e:  # noqa: BLE001 (any failure of user code is reported, named)
            raise ValueError(f"reward on {where} (prompt {p[:60]!r}, completion "
                             f"{c[:60]!r}) failed: {type(e).__name__}: {e}") from e
    return out
