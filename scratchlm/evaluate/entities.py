"""Entity-level precision, recall and F1 over IOB2 tag sequences, as seqeval (and CoNLL's
conlleval) count them: an entity is a (type, start, end) span; a prediction is right only if
its whole span and type match a gold entity.

Span rules (seqeval's default mode): an entity starts at ``B-X``, or at ``I-X`` after ``O`` or
after another type; it continues over ``I-X`` of the same type and ends before anything else.
"""

from __future__ import annotations

from collections import Counter


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """{(type, start, end inclusive)} of one tag sequence."""
    out = set()
    kind, start = None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, t = tag.partition("-")
        continues = prefix == "I" and t == kind
        if kind is not None and not continues:
            out.add((kind, start, i - 1))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = t, i
    return out


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Per entity type and micro-averaged: precision, recall, f1, support (gold entities)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sequences but {len(pred)} predicted")
    tp, n_pred, n_gold = Counter(), Counter(), Counter()
    for g, p in zip(gold, pred):
        if len(g) != len(p):
            raise ValueError(f"a gold sequence of {len(g)} tags has {len(p)} predictions")
        ge, pe = entities(g), entities(p)
        for kind, *_ in ge:
            n_gold[kind] += 1
        for kind, *_ in pe:
            n_pred[kind] += 1
        for kind, *_ in ge & pe:
            tp[kind] += 1

    def prf(t, p, g):
        prec = t / p if p else 0.0
        rec = t / g if g else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return {"precision": prec, "recall": rec, "f1": f1, "support": g}

    kinds = sorted(set(n_gold) | set(n_pred))
    report = {k: prf(tp[k], n_pred[k], n_gold[k]) for k in kinds}
    report["micro"] = prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    return report
