"""Rewards: checked answers (the GSM8K verifier), the final-answer format, length, weighted
specs, a learned reward model, and clear errors for a reward that fails."""

from __future__ import annotations

import pytest

from scratchlm.rl.rewards import (answer_reward, build_reward, format_reward, parse_spec,
                                        score_all)


def test_answer_and_format_rewards():
    assert answer_reward("q", "12 + 7 = 19\n#### 19", "19") == 1.0
    assert answer_reward("q", "It is $1,000.", "1000") == 1.0  # the last number, normalised
    assert answer_reward("q", "#### 18", "19") == 0.0 and answer_reward("q", "no idea", "1") == 0
    assert format_reward("q", "<think>7 + 12</think>\n#### 19", "19") == 1.0
    assert format_reward("q", "So 19.\n####  -3.5 ", "x") == 1.0
    assert format_reward("q", "#### 19\nand more", "19") == 0.0  # not the last line
    assert format_reward("q", "<think>hmm\n#### 19", "19") == 0.0  # thinking never closed
    assert format_reward("q", "19", "19") == 0.0


def test_specs_weight_and_sum(gpt2_tok):
    assert parse_spec("answer, format:0.2") == [("answer", 1.0), ("format", 0.2)]
    reward = build_reward("answer,format:0.2,length", gpt2_tok, length_penalty=0.01)
    text = "2+3 = 5\n#### 5"
    want = 1.0 + 0.2 - 0.01 * len(gpt2_tok.encode(text))
    assert reward("What is 2+3?", text, "5") == pytest.approx(want)
    for spec, message in [("answer,vibes", "unknown reward 'vibes'"),
                          ("answer:x", "the weight is not a number"), ("", "no reward given")]:
        with pytest.raises(ValueError, match=message):
            build_reward(spec, gpt2_tok)
    with pytest.raises(ValueError, match="needs --grpo.reward_model"):
        build_reward("reward_model", gpt2_tok)


def test_a_failing_reward_names_the_example():
    with pytest.raises(ValueError, match=r"reward on example 1 .*ZeroDivisionError"):
        score_all(lambda p, c, r: 1 / (len(c) - 2), ["a", "b"], ["x", "yy"], ["1", "1"])
    with pytest.raises(ValueError, match=r"returned None, not a number"):
        score_all(lambda p, c, r: None, ["a"], ["x"], ["1"])


def _reward_model(folder, tokenizer):
    """A tiny random reward model (one-number head), saved as `finetune reward` saves one."""
    import dataclasses

    import torch

    from scratchlm.finetune.reward import RewardScorer
    from scratchlm.models.registry import build_model, preset

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(preset("gpt-tiny")[1], vocab_size=512))
    model.out_head = torch.nn.Linear(model.cfg.n_embd, 1)
    RewardScorer(model, tokenizer, "alpaca").save(folder)
    return folder


def test_a_reward_model_scores_completions(tmp_path, small_bpe):
    """RLHF: a `finetune reward` model folder as the reward (its scores, rendered the way it
    was trained)."""
    from scratchlm.finetune.reward import RewardScorer

    folder = _reward_model(tmp_path / "rm", small_bpe)
    reward = build_reward("reward_model", small_bpe, reward_model=str(folder))
    scorer = RewardScorer.load(folder)
    got = [reward("Say hi.", c, "") for c in ("Hi there!", "No.")]
    assert got == pytest.approx([scorer("Say hi.", [c])[0] for c in ("Hi there!", "No.")])
    assert got[0] != got[1]


def test_a_reward_model_scores_a_batch_as_one_by_one(tmp_path, small_bpe):
    """The batched path (one forward per batch of completions, as GRPO scores a rollout)
    gives the one-by-one scores, summed with the other rewards; a failure still names the
    example."""
    from scratchlm.rl.rewards import score_all

    folder = _reward_model(tmp_path / "rm", small_bpe)
    reward = build_reward("reward_model,length:2", small_bpe, length_penalty=0.01,
                          reward_model=str(folder))
    prompts = ["Say hi.", "Say hi.", "Be brief.", "Write more words please."] * 3
    completions = ["Hi there!", "No.", "Ok", "Many many many words here."] * 3
    batched = score_all(reward, prompts, completions, [""] * 12)
    one_by_one = [reward(p, c, "") for p, c in zip(prompts, completions)]
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    assert len(set(round(x, 5) for x in batched)) > 1

    def bad(p, c, r):
        return 1.0 if c != "No." else float("nan")
    bad.batch = lambda ps, cs, rs: [bad(p, c, r) for p, c, r in zip(ps, cs, rs)]
    with pytest.raises(ValueError, match="example 1 .*not a finite number"):
        score_all(bad, prompts, completions, [""] * 12)


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf", "1e999"])
def test_a_non_finite_reward_weight_is_refused(weight):
    # a NaN weight makes every summed reward NaN, and GRPO trains on NaN advantages
    with pytest.raises(ValueError, match=f"reward 'answer:{weight}': .*finite"):
        parse_spec(f"answer:{weight},format:0.2")
