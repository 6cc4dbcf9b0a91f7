"""The reward model: the Bradley-Terry loss by hand, batching pairs, the recipe on a tiny model
with a preference it can learn, and best-of-N through ``scratchlm generate``."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from scratchlm.data.instruction import RewardCollate
from scratchlm.finetune.reward import bradley_terry_loss
from scratchlm.generation.best_of import best_of_n


def test_bradley_terry_by_hand():
    c, r = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert bradley_terry_loss(c, r).item() == pytest.approx(expected)
    assert bradley_terry_loss(r, r).item() == pytest.approx(math.log(2))


def test_reward_collate_pairs_and_keeps_the_end():
    batch = [(([1, 2, 3], [0, 1, 1]), ([1, 4], [0, 1])),
             (([5, 6, 7, 8, 9], [0] * 5), ([5], [0]))]
    (ids, lengths), pairs = RewardCollate(0, allowed_max_length=4)(batch)
    assert ids.tolist() == [[1, 2, 3, 0], [6, 7, 8, 9], [1, 4, 0, 0], [5, 0, 0, 0]]
    assert lengths.tolist() == [3, 4, 2, 1] and pairs.shape == (2,)


def preference_file(path, n=48):
    """Half the prompts ask for a polite answer, half for a brief one: the preferred answer
    depends on the prompt, so a random reward model is right about half the time."""
    polite, brief = "Yes, thank you kindly.", "Yes."
    rows = [{"instruction": f"Answer {'politely' if i % 2 else 'briefly'}: is {i} fine?",
             "input": "", "output": polite if i % 2 else brief,
             "chosen": polite if i % 2 else brief, "rejected": brief if i % 2 else polite}
            for i in range(n)]
    path.write_text(json.dumps(rows))
    return path


def test_reward_recipe_learns_a_preference_and_ranks_best_of_n(tiny_chat_model, tmp_path):
    from scratchlm.finetune.reward import RewardScorer
    from scratchlm.recipes.finetune_reward import RewardConfig, main
    from scratchlm.training.loop import TrainConfig

    data = preference_file(tmp_path / "prefs.json")
    res = main(RewardConfig(model=str(tiny_chat_model()), data=str(data), out=str(tmp_path / "rm"),
                            epochs=8, trainable="all",
                            train=TrainConfig(max_steps=0, batch_size=8, lr=1e-3, schedule="constant",
                                              warmup_steps=0, save_every=10**9,
                                              tensorboard=False)))
    assert res["before"]["accuracy"] <= 0.75
    assert res["after"]["accuracy"] == 1.0 and res["after"]["margin"] > 1.0
    assert res["after"]["loss"] < res["before"]["loss"]
    scorer = RewardScorer.load(tmp_path / "rm" / "final")
    polite, brief = scorer("Answer politely: is 99 fine?", ["Yes, thank you kindly.", "Yes."])
    assert polite > brief
    polite, brief = scorer("Answer briefly: is 98 fine?", ["Yes, thank you kindly.", "Yes."])
    assert brief > polite

    # best-of-N through the CLI: the printed answer is the best-rated of the ranked list
    cmd = [sys.executable, "-m", "scratchlm", "generate", "--model", str(tiny_chat_model()),
           "--prompt", "Is this fine?", "--best-of", "4", "--reward-model",
           str(tmp_path / "rm" / "final"), "--temperature", "1.0", "--seed", "3",
           "--max-new-tokens", "6", "--chat"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ranked = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert len(ranked) == 4
    scores = [float(line.split("reward ")[1].split(":")[0]) for line in ranked]
    assert scores == sorted(scores, reverse=True)
    best = ranked[0].split(": ", 1)[1]
    assert done.stdout.strip() == eval(best).strip()  # --chat: the answer alone


def test_best_of_n_picks_the_highest_score_and_needs_sampling():
    from scratchlm.generation.engine import Engine, SamplingParams
    from scratchlm.models.gpt import GPT, GPTConfig
    from scratchlm.tokenizers import get_tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-tiny")).eval()
    tok = get_tokenizer("gpt2")
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=0)
    ranked = best_of_n(Engine(model), tok, tok.encode("Hello"), params, 5,
                       lambda texts: [len(t) for t in texts])
    assert len(ranked) == 5
    assert ranked[0].score == max(len(c.text) for c in ranked)
    assert len({c.text for c in ranked}) > 1  # really sampled
    with pytest.raises(ValueError, match="temperature"):
        best_of_n(Engine(model), tok, [1, 2], SamplingParams(temperature=0.0), 3, len)


def test_packed_reward_training_learns_the_same_preference(tiny_chat_model, tmp_path):
    from scratchlm.recipes.finetune_reward import RewardConfig, main
    from scratchlm.training.loop import TrainConfig

    data = preference_file(tmp_path / "prefs.json")
    res = main(RewardConfig(model=str(tiny_chat_model()), data=str(data), out=str(tmp_path / "rm"),
                            epochs=8, trainable="all", packing=True,
                            train=TrainConfig(max_steps=0, batch_size=8, lr=1e-3, schedule="constant",
                                              warmup_steps=0, save_every=10**9,
                                              tensorboard=False)))
    assert res["after"]["accuracy"] == 1.0 and res["after"]["margin"] > 1.0
