"""Checks every family with sliding windows runs the same way against transformers: greedy
generation past the window equals ``transformers.generate``, and a left-padded batch equals
its rows run alone."""

from __future__ import annotations

import torch

from scratchlm.generation.engine import Engine, SamplingParams

# the first prompt is longer than the windows the tests set (4 or 5)
PROMPTS = [[5, 17, 42, 99, 3, 8, 9, 10, 11], [7, 8]]
PADDED = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [4, 4, 4, 4]]


def assert_greedy_matches_transformers(ours, hf, new: int = 14) -> None:
    got = Engine(ours).generate(PROMPTS, SamplingParams(max_new_tokens=new))
    for p, g in zip(PROMPTS, got):
        want = hf.generate(torch.tensor([p]), max_new_tokens=new, do_sample=False,
                           attention_mask=torch.ones(1, len(p), dtype=torch.long))
        assert g == want[0, len(p):].tolist()


def assert_padded_batch_equals_rows(ours, new: int = 10) -> None:
    engine = Engine(ours)
    batched = engine.generate(PADDED, SamplingParams(max_new_tokens=new))
    assert batched == [engine.generate([p], SamplingParams(max_new_tokens=new))[0]
                       for p in PADDED]
