"""GSM8K, grade-school math word problems, graded by a verifier: the model's final number
against the reference's ``#### N``.

    problems = load_gsm8k("test")
    result = evaluate_gsm8k(model, tokenizer, problems, mode="chat")   # or "fewshot"
    result["exact_match"], result.get("pass@k"), result.get("maj@k")

- Prompting: ``fewshot`` puts ``shots`` solved training problems before the question
  ("Question: ... / Answer: ...", their ``<<calculator>>`` notes removed) and stops at the
  next "Question:"; ``chat`` asks the question as a user turn of the model's chat template.
- Answers: the number after the last ``####`` when there is one, else the last number of the
  response; "$1,234.50" and "1234.5" are the same number.
- ``samples`` > 1 draws that many answers per problem at ``temperature``: ``pass@k`` is the
  unbiased estimator (Chen et al. 2021, 1 - C(n-c, k) / C(n, k)) and ``maj@k``
  self-consistency, the majority answer (Wang et al. 2022).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext

from torch import nn

from scratchlm.data.instruction import CALCULATOR_NOTES, GSM8K_PROMPT_SUFFIX
from scratchlm.data.text_file import read_text
from scratchlm.evaluate.cache import score_pending

_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+")


@dataclass
class Problem:
    question: str
    answer: str  # the reference's worked solution, ending in "#### N"

    @property
    def target(self) -> str:
        """The reference's final number, normalised."""
        got = final_number(self.answer)
        if got is None:
            raise ValueError(f"a GSM8K answer without a number: {self.answer[-80:]!r}")
        return got


def load_gsm8k(split: str = "test", limit: int | None = None) -> list[Problem]:
    """The official files (``data/sources``: cache, mirror or download), ``train`` or
    ``test``; every line checked."""
    from scratchlm.downloads.sources import fetch

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = fetch(f"gsm8k-{split}", progress=False)
    out = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            out.append(Problem(str(doc["question"]), str(doc["answer"])))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a GSM8K problem ({e})") from None
        if limit is not None and len(out) >= limit:
            break
    return out


def row_problem(row: dict, problem: Problem, samples: int) -> str | None:
    """Why a cached row (``evaluate_gsm8k``'s) cannot be the result for ``problem`` with
    ``samples`` answers; None when it can."""
    if set(row) != {"target", "responses", "answers", "correct"}:
        return f"fields {sorted(row)}, not target, responses, answers, correct"
    if row["target"] != problem.target:
        return f"'target' is {row['target']!r}, the test set says {problem.target!r}"
    lists = {"responses": (str,), "answers": (str, type(None)), "correct": (bool,)}
    for key, kinds in lists.items():
        value = row[key]
        if not isinstance(value, list) or len(value) != samples or not all(
                isinstance(x, kinds) for x in value):
            return f"{key!r} must be a list of {samples} ({' or '.join(k.__name__ for k in kinds)})"
    if row["correct"] != [a == problem.target for a in row["answers"]]:
        return "'correct' does not match its answers"
    return None


def normalize_number(text: str) -> str | None:
    """"$1,234.50" -> "1234.5", "-3" -> "-3", "7." -> "7"; None if it is not a number."""
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    if len(cleaned) > 400:  # a run of digits from a rambling model, not an answer
        return None
    with localcontext() as ctx:  # enough digits for any number it is given (28 by default)
        ctx.prec = len(cleaned) + 2
        try:
            value = Decimal(cleaned)
        except InvalidOperation:
            return None
        if not value.is_finite() or abs(value.adjusted()) > 400:
            return None
        return format(value.normalize(), "f")  # no trailing zeros; integers without a point


def final_number(text: str) -> str | None:
    """The answer a response gives: the first number after its last ``####``, else its last
    number; normalised (``normalize_number``), None when there is none."""
    if "####" in text:
        after = text.rsplit("####", 1)[1]
        found = _NUMBER.search(after)
        if found:
            return normalize_number(found.group())
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(answers: Sequence[str | None]) -> str | None:
    """The most common answer (the earliest among ties); None when no sample gave one."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def fewshot_prompt(problem: Problem, shots: Sequence[Problem]) -> str:
    demo = "".join(f"Question: {s.question}\nAnswer: {CALCULATOR_NOTES.sub('', s.answer)}\n\n"
                   for s in shots)
    return demo + f"Question: {problem.question}\nAnswer:"


def _generate(engine, tokenizer, prompts: list[list[int]], max_new_tokens: int,
              temperature: float, seed: int | None, stop: str | None) -> list[str]:
    """Batched generation with the engine; a row ends at end-of-text or the ``stop`` text
    (which is left out), detokenized as the engine's ``TextStream`` does."""
    from scratchlm.generation.engine import SamplingParams, TextStream

    eos = tuple(i for i in (tokenizer.eos_id,) if i is not None)
    params = SamplingParams(max_new_tokens, temperature, stop_ids=eos, seed=seed)
    streams = [TextStream(tokenizer, [stop] if stop else []) for _ in prompts]
    texts = [""] * len(prompts)
    ended = [False] * len(prompts)
    for step in engine.stream(prompts, params):
        for i, tok in enumerate(step):
            if tok is None or ended[i]:
                continue
            if tok in eos:
                ended[i] = True
                continue
            texts[i] += streams[i].push(tok)
            ended[i] = streams[i].stopped
        if all(ended):
            break
    return [t + s.finish() for t, s in zip(texts, streams)]


def evaluate_gsm8k(model: nn.Module, tokenizer, problems: Sequence[Problem], mode: str = "chat",
                   shots: int = 5, shot_pool: Sequence[Problem] | None = None,
                   samples: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
                   batch_size: int = 8, seed: int = 1234, progress: bool = True,
                   done: dict[int, dict] | None = None,
                   on_result: Callable[[int, dict], None] | None = None) -> dict:
    """Exact match (the first sample), and with ``samples`` > 1 ``pass@k`` and ``maj@k``.
    ``done``/``on_result``: resuming from and recording per-problem rows (see choice.py)."""
    import random

    from scratchlm.generation.engine import Engine
    from scratchlm.tokenizers.chat import encode_chat

    if mode not in ("chat", "fewshot"):
        raise ValueError(f"mode must be 'chat' or 'fewshot', got {mode!r}")
    if mode == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("mode 'chat' needs a tokenizer with a chat template; use 'fewshot'")
    if samples > 1 and temperature <= 0:
        raise ValueError("several samples need a temperature > 0")
    pool = list(shot_pool) if shot_pool is not None else []
    if mode == "fewshot" and len(pool) < shots:
        raise ValueError(f"{shots} shots need a shot pool (the train split) of at least that")
    shot_list = random.Random(seed).sample(pool, shots) if mode == "fewshot" else []

    def encode(p: Problem) -> list[int]:
        if mode == "chat":
            return encode_chat(tokenizer, [{"role": "user", "content": p.question
                                            + GSM8K_PROMPT_SUFFIX}], add_generation_prompt=True)
        return tokenizer.encode(fewshot_prompt(p, shot_list))

    engine = Engine(model)

    def score(chunk: list[int], start: int):  # the problems' samples generated together
        prompts = [encode(problems[i]) for i in chunk for _ in range(samples)]
        texts = _generate(engine, tokenizer, prompts, max_new_tokens, temperature,
                          seed + start if temperature > 0 else None,
                          "Question:" if mode == "fewshot" else None)
        for j, i in enumerate(chunk):
            responses = texts[j * samples:(j + 1) * samples]
            answers = [final_number(r) for r in responses]
            target = problems[i].target
            yield {"target": target, "responses": responses, "answers": answers,
                   "correct": [a == target for a in answers]}

    n = len(problems)
    rows = score_pending(n, score, batch_size, done, on_result, desc=f"gsm8k {mode}",
                         unit="problem", progress=progress)
    result = {"problems": n, "mode": mode, "shots": shots if mode == "fewshot" else 0,
              "samples": samples,
              "exact_match": sum(r["correct"][0] for r in rows) / n}
    if samples > 1:
        result[f"pass@{samples}"] = sum(pass_at_k(samples, sum(r["correct"]), samples)
                                        for r in rows) / n
        result["pass@1"] = sum(pass_at_k(samples, sum(r["correct"]), 1) for r in rows) / n
        result[f"maj@{samples}"] = sum(majority(r["answers"]) == r["target"] for r in rows) / n
    result["rows"] = rows
    return result
