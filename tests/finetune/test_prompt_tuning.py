"""Prompt tuning: equal to Hugging Face PEFT's prompt tuning on the same weights and prompt
(both ways through the file format), initialisation from text, a frozen base, and the recipe
for SFT data and for classification by label words."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.finetune.prompt_tuning import PromptTuned, load_prompt, save_prompt

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def hf_gpt2(folder):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(folder)
    return hf


def test_logits_match_peft_prompt_tuning(tmp_path):
    from scratchlm.checkpoints.hf import load_hf_gpt2

    hf = hf_gpt2(tmp_path / "hf")
    ours = load_hf_gpt2(tmp_path / "hf").eval()
    tuned = PromptTuned(ours, num_virtual_tokens=6)
    save_prompt(tuned, tmp_path / "prompt", str(tmp_path / "hf"))  # a local base: no lookups
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "prompt").eval()
    x = torch.randint(0, 500, (2, 17))
    with torch.no_grad():
        want = theirs(input_ids=x).logits[:, 6:]  # PEFT returns the virtual positions too
        got = tuned(x)
    assert got.shape == (2, 17, 500)
    assert (got - want).abs().max().item() <= 1e-4
    with torch.no_grad():  # and the prompt matters: without it the logits differ
        assert (ours(x) - got).abs().max().item() > 1e-3

    # a prompt PEFT saved loads into ours
    theirs.save_pretrained(tmp_path / "peft-saved")
    again = load_prompt(load_hf_gpt2(tmp_path / "hf").eval(), tmp_path / "peft-saved")
    with torch.no_grad():
        assert (again(x) - got).abs().max().item() <= 1e-5


def test_text_initialisation_and_frozen_base(gpt2_tok):
    from scratchlm.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig.from_name("gpt-tiny"))
    text = "Classify if the tweet is a complaint or not:"
    tuned = PromptTuned(model, 20, text, gpt2_tok)
    ids = gpt2_tok.encode(text)
    want = model.tok_emb.weight[[ids[i % len(ids)] for i in range(20)]]
    assert torch.equal(tuned.prompt.data, want)
    assert [n for n, p in tuned.named_parameters() if p.requires_grad] == ["prompt"]
    assert tuned.cfg.context_length == model.cfg.context_length - 20
    with pytest.raises(ValueError, match="KV cache"):
        model.hidden_states(torch.tensor([[1]]), cache=object(), prefix=tuned.prompt)


@pytest.mark.slow
def test_prompt_recipe_on_instruction_data(tmp_path):
    """SmolLM2-135M-Instruct, frozen, learns a fixed reply from a 12-token soft prompt."""
    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.recipes.finetune_prompt import PromptConfig, main
    from scratchlm.training.loop import TrainConfig

    rows = [{"instruction": f"Say hello to person {i}.", "input": "",
             "output": "Greetings, dear human number one!"} for i in range(40)]
    (tmp_path / "data.json").write_text(json.dumps(rows))
    res = main(PromptConfig(model="smollm2-135m-instruct", data=str(tmp_path / "data.json"),
                            out=str(tmp_path / "run"), num_virtual_tokens=12, epochs=2,
                            train=TrainConfig(max_steps=0, batch_size=8, lr=3e-2, schedule="constant",
                                              warmup_steps=0, weight_decay=0.0,
                                              save_every=10**9, eval_batches=1,
                                              tensorboard=False)))
    assert res["task"] == "instruct" and res["trainable"] == 12 * 576
    assert res["test_loss"] < res["test_loss_before"] - 0.5
    saved = json.loads((tmp_path / "run" / "final" / "prompt" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PROMPT_TUNING" and saved["num_virtual_tokens"] == 12
    model, _ = load_model_and_tokenizer("smollm2-135m-instruct")
    tuned = load_prompt(model, tmp_path / "run" / "final" / "prompt")
    assert tuned.num_virtual_tokens == 12


def sentiment_csv(path, n=64):
    import csv
    import random

    rng = random.Random(0)
    good = ["I love this", "what a wonderful day", "great food and kind staff", "simply superb"]
    bad = ["I hate this", "what an awful day", "terrible food and rude staff", "simply dreadful"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            pos = i % 2 == 0
            w.writerow([rng.choice(good if pos else bad) + rng.choice(["!", ".", "", " indeed."]),
                        "positive" if pos else "negative"])
    return path


@pytest.mark.slow
def test_prompt_recipe_classifies_by_label_words(tmp_path):
    """SmolLM2-135M-Instruct, frozen, learns to answer 'positive'/'negative' after the cue,
    from a randomly initialised 8-token prompt."""
    from scratchlm.recipes.finetune_prompt import PromptConfig, main
    from scratchlm.training.loop import TrainConfig

    res = main(PromptConfig(model="smollm2-135m-instruct", data=str(sentiment_csv(tmp_path / "s.csv")),
                            out=str(tmp_path / "run"), num_virtual_tokens=8, epochs=3,
                            train=TrainConfig(max_steps=0, batch_size=8, lr=3e-2, schedule="constant",
                                              warmup_steps=0, weight_decay=0.0,
                                              save_every=10**9, eval_batches=1,
                                              tensorboard=False)))
    assert res["trainable"] == 8 * 576
    assert res["label_words"] == {"negative": "negative", "positive": "positive"}
    assert res["test_accuracy"] >= 0.9 and res["test_accuracy"] > res["test_accuracy_before"]
