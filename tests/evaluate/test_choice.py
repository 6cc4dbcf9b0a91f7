"""Multiple choice by log-likelihood: the published layouts read with lm-evaluation-harness's
prompts, bad files named by line, the shared-context scores equal one forward per choice, and
acc / acc_norm as defined."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.evaluate.choice import (Example, TaskError, _one_forward, encode_pair,
                                       evaluate_choices, fewshot_context, loglikelihoods,
                                       pick_shots, read_task)
from scratchlm.models.registry import build_model, preset


def _write(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_published_layouts(tmp_path):
    arc = read_task(_write(tmp_path / "arc.jsonl", [{
        "question": "Which is a gas?", "choices": {"text": ["ice", "steam"],
                                                   "label": ["A", "B"]}, "answerKey": "B"}]),
        "arc")[0]
    assert arc == Example("Question: Which is a gas?\nAnswer:", ["ice", "steam"], 1)
    mmlu = read_task(_write(tmp_path / "mmlu.jsonl", [{
        "question": " 2+2? ", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"],
        "answer": 1}]), "mmlu")[0]
    assert mmlu.context == "2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:" and mmlu.choices == list("ABCD")
    assert mmlu.description.endswith("about elementary mathematics.\n\n")
    hs = read_task(_write(tmp_path / "hs.jsonl", [{
        "activity_label": "Baking", "ctx_a": "She mixes flour.", "ctx_b": "then she",
        "endings": ["bakes [title] it.", "sings"], "label": "0"}]), "hellaswag")[0]
    assert hs.context == "Baking: She mixes flour. Then she" and hs.choices[0] == "bakes. it."
    piqa = read_task(_write(tmp_path / "piqa.jsonl", [{
        "goal": "Open a jar", "sol1": "twist", "sol2": "bite", "label": 0}]), "piqa")[0]
    assert piqa.choices == ["twist", "bite"] and piqa.label == 0
    wino = read_task(_write(tmp_path / "wino.jsonl", [{
        "sentence": "Ann thanked Bo because _ had helped.", "option1": "Ann", "option2": "Bo",
        "answer": "2"}]), "winogrande")[0]
    assert wino == Example("", ["Ann thanked Bo because Ann", "Ann thanked Bo because Bo"], 1,
                           continuation="had helped.")
    with pytest.raises(TaskError, match=r"test.jsonl:1: .*the test split has no answers"):
        read_task(_write(tmp_path / "test.jsonl", [{
            "sentence": "A _ b.", "option1": "x", "option2": "y", "answer": ""}]), "winogrande")


def test_bad_task_files_name_the_file_and_line(tmp_path):
    good = {"context": "c", "choices": ["a", "b"], "label": 0}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(TaskError, match=r"bad.jsonl:2: not JSON"):
        read_task(bad)
    _write(bad, [good, good, {**good, "label": 2}])
    with pytest.raises(TaskError, match=r"bad.jsonl:3: label 2 is not the index"):
        read_task(bad)
    _write(bad, [{**good, "choices": ["only one"]}])
    with pytest.raises(TaskError, match=r":1: choices must be a list of at least two"):
        read_task(bad)
    _write(bad, [{"question": "no context"}])
    with pytest.raises(TaskError, match=r":1: not a jsonl example \(KeyError"):
        read_task(bad)
    bad.write_text("\n\n")
    with pytest.raises(TaskError, match="no examples"):
        read_task(bad)
    bad.write_bytes(b'{"context": "\xff"}\n')
    with pytest.raises(TaskError, match=r":1: not UTF-8"):
        read_task(bad)


def test_pairs_split_as_the_harness_splits_them(gpt2_tok):
    ctx, cont = encode_pair(gpt2_tok, "The sky is ", "blue")
    assert gpt2_tok.decode(ctx) == "The sky is" and gpt2_tok.decode(cont) == " blue"
    ctx, cont = encode_pair(gpt2_tok, "", "Hello")
    assert ctx == [gpt2_tok.eos_id] and cont == gpt2_tok.encode("Hello")


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "qwen3-tiny", "gemma3-tiny",
                                  "gemma4-tiny"])
def test_shared_context_scores_equal_one_forward_per_choice(name):
    torch.manual_seed(0)
    model = build_model(preset(name)[1]).eval()
    reqs = [([5, 6, 7, 8, 9], [10, 11, 12]), ([5, 6, 7, 8, 9], [13]),
            ([5, 6, 7, 8, 9], [14, 15]), ([1, 2], [3, 4, 5, 6])]
    got = loglikelihoods(model, reqs)
    want = [_one_forward(model, c, d)[0] for c, d in reqs]
    assert got == pytest.approx(want, abs=1e-4)


def test_acc_and_acc_norm(gpt2_tok):
    torch.manual_seed(0)
    model = build_model(preset("gpt-tiny")[1]).eval()
    examples = [Example("Q: colour of the sky?\nA:", ["blue", "a very long green answer"], 0),
                Example("Q: two plus two?\nA:", ["four", "five"], 1)]
    res = evaluate_choices(model, gpt2_tok, examples, progress=False)
    for ex, row in zip(examples, res["rows"]):
        lls = [_one_forward(model, *encode_pair(gpt2_tok, ex.context, " " + c))[0]
               for c in ex.choices]
        assert row["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        best = max(range(2), key=lambda i: lls[i])
        best_norm = max(range(2), key=lambda i: lls[i] / len(ex.choices[i]))
        assert row["acc"] == float(best == ex.label)
        assert row["acc_norm"] == float(best_norm == ex.label)
    assert res["acc"] == sum(r["acc"] for r in res["rows"]) / 2


def test_fewshot_prompts_are_seeded_and_never_the_question_itself():
    pool = [Example(f"Q{i}:", ["x", "y"], i % 2) for i in range(6)]
    shots = pick_shots(pool, 3, seed=7, exclude=pool[0])
    assert shots == pick_shots(pool, 3, seed=7, exclude=pool[0]) and pool[0] not in shots
    text = fewshot_context(pool[0], shots)
    assert text.endswith("\n\nQ0:") and text.count("\n\n") == 3
    solved = Example("", ["It was Ann", "It was Bo"], 1, continuation="who came.")
    assert fewshot_context(pool[0], [solved]) == "It was Bo who came.\n\nQ0:"
    with pytest.raises(ValueError, match="the pool holds 5"):
        pick_shots(pool, 6, seed=1, exclude=pool[0])
