"""A generated arithmetic task whose answers are checked exactly: the task on which a small
model can visibly learn by reinforcement on a CPU in minutes.

    problems = arithmetic_problems(200, difficulty=1, seed=0)
    problems[0]  ->  ("What is 7 + 12?", "19")

``difficulty`` d sets the operands (d + 1 of them), their size (1 to 20 * d) and
the operations (+ and - from 1, * from 2); the answer is Python's evaluation of the expression
with the usual precedence. The same seed gives the same problems, and ``split`` keeps a
held-out set disjoint from the training problems.
"""

from __future__ import annotations

import random


def arithmetic_problems(n: int, difficulty: int = 1, seed: int = 0,
                        exclude: set[str] | None = None) -> list[tuple[str, str]]:
    """``n`` distinct (question, answer) pairs, none of whose questions is in ``exclude``."""
    if difficulty < 1:
        raise ValueError(f"difficulty must be >= 1, got {difficulty}")
    if n < 1:
        raise ValueError(f"need at least one problem, got {n}")
    rng = random.Random(seed)
    ops = ["+", "-"] + (["*"] if difficulty >= 2 else [])
    top = 20 * difficulty
    possible = top ** (difficulty + 1) * len(ops) ** difficulty
    if n + len(exclude or ()) > possible:
        raise ValueError(f"difficulty {difficulty} has {possible} distinct problems, fewer "
                         f"than the {n} asked (besides {len(exclude or ())} excluded)")
    seen = set(exclude or ())
    out = []
    for _ in range(n * 1000):
        terms = [str(rng.randint(1, top))]
        for _ in range(difficulty):
            terms += [rng.choice(ops), str(rng.randint(1, top))]
        expr = " ".join(terms)
        question = f"What is {expr}?"
        if question in seen:
            continue
        seen.add(question)
        out.append((question, str(eval(expr, {"__builtins__": {}}))))  # digits and + - * only
        if len(out) == n:
            return out
    raise ValueError(f"difficulty {difficulty} has fewer than {n} distinct problems")


def split(n_train: int, n_test: int, difficulty: int = 1, seed: int = 0):
    """(train, test) problems, disjoint."""
    train = arithmetic_problems(n_train, difficulty, seed)
    test = arithmetic_problems(n_test, difficulty, seed + 1, exclude={q for q, _ in train})
    return train, test
