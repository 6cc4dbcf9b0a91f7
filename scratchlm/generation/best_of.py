"""Best-of-N sampling: draw N answers to one prompt in one batch and keep the one a scorer
(usually a reward model, ``finetune/reward.py``) rates highest. A cheap way to spend inference
compute on quality, without changing the policy's weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scratchlm.generation.engine import Engine, SamplingParams


@dataclass
class Candidate:
    text: str
    score: float


def best_of_n(engine: Engine, tokenizer, prompt_ids: Sequence[int], params: SamplingParams,
              n: int, score: Callable[[list[str]], list[float]]) -> list[Candidate]:
    """N sampled continuations of ``prompt_ids``, best first. Greedy decoding would give N
    equal answers, so ``params.temperature`` must be > 0."""
    if n < 1:
        raise ValueError(f"best-of-N needs N >= 1, got {n}")
    if n > 1 and params.temperature <= 0:
        raise ValueError("best-of-N with N > 1 needs sampling: give a temperature > 0")
    outs = engine.generate([list(prompt_ids)] * n, params)
    texts = [tokenizer.decode(ids) for ids in outs]
    scores = score(texts)
    return sorted((Candidate(t, float(s)) for t, s in zip(texts, scores)),
                  key=lambda c: c.score, reverse=True)
