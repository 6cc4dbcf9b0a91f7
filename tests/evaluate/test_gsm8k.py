"""GSM8K grading: every published answer parses to its #### value, model-style answers are
read, pass@k is the unbiased estimator, and an evaluation runs and resumes."""

from __future__ import annotations

import re

import pytest

from scratchlm.evaluate.gsm8k import (Problem, evaluate_gsm8k, final_number, load_gsm8k,
                                      majority, pass_at_k)


def test_every_published_test_answer_parses_to_its_final_value():
    problems = load_gsm8k("test")
    assert len(problems) == 1319
    for p in problems:
        raw = p.answer.rsplit("####", 1)[1].strip()
        assert re.fullmatch(r"-?[\d,]+", raw), raw
        assert p.target == str(int(raw.replace(",", "")))


@pytest.mark.parametrize("text,want", [
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
    ("The answer is $1,234.50.", "1234.5"),
    ("So the total is 12 apples, and then 5.", "5"),
    ("#### $18.00", "18"),
    ("He lost -3 points", "-3"),
    ("#### 1,000\nWe checked 7 times", "1000"),
    ("Total: 0.5 hours", "0.5"),
    ("no number here", None),
    ("The final answer is 42.\n\nQuestion: next", "42"),
    ("#### " + "1" * 40, "1" * 40),  # more digits than Decimal's default precision
    ("it is " + "1" * 30 + ".50 in all", "1" * 30 + ".5"),
    ("repeating " + "9" * 600, None),  # a rambling run of digits is no answer
])
def test_answers_in_the_styles_models_write(text, want):
    assert final_number(text) == want


def test_pass_at_k_and_majority():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    assert majority(["3", None, "4", "4", "3"]) == "3"  # a tie: the earliest
    assert majority([None, None]) is None


def test_an_evaluation_runs_and_resumes(small_bpe):
    import dataclasses

    import torch

    from scratchlm.models.registry import build_model, preset

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(preset("gpt-tiny")[1], vocab_size=512)).eval()
    problems = [Problem("What is 2 + 2?", "2 + 2 = 4\n#### 4"),
                Problem("What is 3 + 4?", "#### 7"), Problem("1 + 1?", "#### 2")]
    shots = [Problem("What is 1 + 2?", "1 + 2 = <<1+2=3>>3\n#### 3")]
    seen = {}
    result = evaluate_gsm8k(model, small_bpe, problems, mode="fewshot", shots=1,
                            shot_pool=shots, max_new_tokens=8, batch_size=2, progress=False,
                            on_result=seen.__setitem__)
    assert result["problems"] == 3 and sorted(seen) == [0, 1, 2]
    assert all(r["target"] == p.target for r, p in zip(result["rows"], problems))
    calls = []
    again = evaluate_gsm8k(model, small_bpe, problems, mode="fewshot", shots=1,
                           shot_pool=shots, max_new_tokens=8, progress=False,
                           done={0: seen[0], 1: seen[1]},
                           on_result=lambda i, r: calls.append(i))
    assert calls == [2] and again["exact_match"] == result["exact_match"]
    sampled = evaluate_gsm8k(model, small_bpe, problems, mode="fewshot", shots=1,
                             shot_pool=shots, samples=3, temperature=1.0, max_new_tokens=8,
                             progress=False)
    assert {"pass@1", "pass@3", "maj@3"} <= set(sampled)
    with pytest.raises(ValueError, match="chat template"):
        evaluate_gsm8k(model, small_bpe, problems, mode="chat")
    with pytest.raises(ValueError, match="temperature > 0"):
        evaluate_gsm8k(model, small_bpe, problems, mode="fewshot", shots=1, shot_pool=shots,
                       samples=2)


def test_a_larger_limit_or_batch_continues_the_cached_problems(tiny_chat_model, tmp_path):
    import scratchlm.evaluate.gsm8k as gsm8k
    from scratchlm.evaluate.settings import Gsm8kSettings
    from scratchlm.evaluate.tasks import run_task
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    folder = tiny_chat_model()
    model, tok = load_model_and_tokenizer(str(folder))
    model.eval()
    settings = Gsm8kSettings(max_new_tokens=4, batch_size=2)
    first = run_task("gsm8k", model, tok, tmp_path, limit=2, gsm8k=settings)
    assert first["problems"] == 2
    generated = []
    real = gsm8k._generate
    gsm8k._generate = lambda e, t, prompts, *a: generated.append(len(prompts)) or real(
        e, t, prompts, *a)
    try:
        more = run_task("gsm8k", model, tok, tmp_path, limit=3,
                        gsm8k=Gsm8kSettings(max_new_tokens=4, batch_size=4))
        assert generated == [1] and more["rows"][:2] == first["rows"]  # only problem 3
        run_task("gsm8k", model, tok, tmp_path, limit=3,
                 gsm8k=Gsm8kSettings(max_new_tokens=5, batch_size=4))
        assert generated == [1, 3]  # another max_new_tokens is another evaluation
    finally:
        gsm8k._generate = real
