"""The generated arithmetic task: right answers, seeded, held-out problems disjoint."""

from __future__ import annotations

import re

import pytest

from scratchlm.data.arithmetic import arithmetic_problems, split


def test_answers_are_right_and_problems_seeded():
    for difficulty in (1, 2, 3):
        problems = arithmetic_problems(50, difficulty, seed=5)
        assert problems == arithmetic_problems(50, difficulty, seed=5)
        assert len({q for q, _ in problems}) == 50
        for q, a in problems:
            expr = re.fullmatch(r"What is ([\d +*-]+)\?", q).group(1)
            assert len(expr.split()) == 2 * difficulty + 1
            # the usual precedence, computed by hand: products first, then left to right
            terms, ops = expr.split()[::2], expr.split()[1::2]
            values, signs = [int(terms[0])], []
            for op, t in zip(ops, terms[1:]):
                if op == "*":
                    values[-1] *= int(t)
                else:
                    values.append(int(t))
                    signs.append(op)
            total = values[0]
            for op, v in zip(signs, values[1:]):
                total = total + v if op == "+" else total - v
            assert a == str(total)
        assert ("*" in "".join(q for q, _ in problems)) == (difficulty >= 2)


def test_the_held_out_split_is_disjoint_and_bad_sizes_refused():
    train, test = split(100, 30)
    assert not {q for q, _ in train} & {q for q, _ in test} and len(test) == 30
    with pytest.raises(ValueError, match="difficulty must be >= 1"):
        arithmetic_problems(3, difficulty=0)
    with pytest.raises(ValueError, match="fewer than"):
        arithmetic_problems(10**6, difficulty=1)
