"""Metrics that need no judge: exact match and contains-the-reference, on normalised text."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Lower case, no punctuation, single spaces (SQuAD-style)."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_match(response: str, reference: str) -> bool:
    return normalize(response) == normalize(reference)


def contains_reference(response: str, reference: str) -> bool:
    ref = normalize(reference)
    return bool(ref) and ref in normalize(response)


def text_metrics(responses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Shares of responses that equal / contain their reference, and their mean word-overlap
    F1 with it (``reference_f1``: moves by degrees where the other two rarely move at all)."""
    if len(responses) != len(references) or not responses:
        raise ValueError("need as many responses as references, at least one")
    n = len(responses)
    return {"exact_match": sum(map(exact_match, responses, references)) / n,
            "contains_reference": sum(map(contains_reference, responses, references)) / n,
            "reference_f1": sum(map(token_f1, responses, references)) / n}


def token_f1(a: str, b: str) -> float:
    """Word-overlap F1 of two texts (normalised; SQuAD's answer F1)."""
    from collections import Counter

    ta, tb = normalize(a).split(), normalize(b).split()
    common = sum((Counter(ta) & Counter(tb)).values())
    if common == 0:
        return 0.0
    p, r = common / len(ta), common / len(tb)
    return 2 * p * r / (p + r)


def closer_to_chosen(responses: Sequence[str], chosen: Sequence[str],
                     rejected: Sequence[str]) -> float:
    """Share of responses whose word overlap with the chosen answer beats the overlap with the
    rejected one (ties count half): did preference tuning move the style towards ``chosen``?"""
    if not (len(responses) == len(chosen) == len(rejected)) or not responses:
        raise ValueError("need equally many responses, chosen and rejected answers")
    wins = 0.0
    for r, c, j in zip(responses, chosen, rejected):
        fc, fj = token_f1(r, c), token_f1(r, j)
        wins += 1.0 if fc > fj else 0.5 if fc == fj else 0.0
    return wins / len(responses)
