"""``scratchlm finetune grpo`` end to end on a tiny chat model: its outputs and metrics,
exact resume, skipped over-long prompts, and flags it cannot honour refused."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from scratchlm.finetune.config import GRPOSettings, LoraConfig
from scratchlm.recipes.finetune_grpo import GRPOConfig, main
from scratchlm.training.checkpoint import list_checkpoints
from scratchlm.training.config import TrainConfig


def tiny_cfg(model, out, **grpo) -> GRPOConfig:
    # Temperature 4: the random tiny model is peaked, and a group needs different
    # completions; the length reward then differs within a group.
    settings = dict(group_size=4, max_new_tokens=6, temperature=4.0, rewards="length,answer",
                    length_penalty=0.1, beta=0.04)
    return GRPOConfig(model=str(model), out=str(out), train_size=8, test_size=2,
                      grpo=GRPOSettings(**{**settings, **grpo}),
                      lora=LoraConfig(rank=4, alpha=8),
                      train=TrainConfig(max_steps=4, batch_size=2, lr=1e-2, schedule="constant",
                                        warmup_steps=0, log_every=1, eval_every=2,
                                        save_every=2, keep_checkpoints=True, tensorboard=False))


def rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["loss"]]


def _cfg(model, out, passes):
    cfg = tiny_cfg(model, out, iterations=passes)
    if passes > 1:  # two steps per rollout, two micro-batches of one prompt per step;
        # checkpoints at every step, so that one falls between the passes over a rollout
        cfg.train.batch_size, cfg.train.grad_accum_steps, cfg.train.save_every = 1, 2, 1
    return cfg


@pytest.mark.parametrize("passes", [1, 2], ids=["one-pass", "two-passes-micro-batched"])
def test_a_run_writes_its_outputs_and_resumes_exactly(tiny_chat_model, tmp_path, passes):
    model = tiny_chat_model()
    straight = tmp_path / "straight"
    result = main(_cfg(model, straight, passes))
    assert {"accuracy_before", "accuracy_after", "train_minutes"} <= set(result)
    for name in ("loss.png", "reward.png", "grpo.json", "metrics.csv"):
        assert (straight / name).is_file(), name
    assert (straight / "final" / "adapter" / "adapter.safetensors").is_file()
    steps = rows(straight)
    assert len(steps) == 4 and sum(float(r["grad_norm"]) > 0 for r in steps) >= 2  # a step
    # whose groups all tied is a zero step
    assert float(steps[-1]["kl"]) > 0  # the policy moved away from the reference
    assert json.loads((straight / "grpo.json").read_text())["samples"]

    if passes > 1:
        assert [float(r["rollout_pass"]) for r in steps] == [1, 2, 1, 2]
        assert [float(r["rollout_s"]) > 0 for r in steps] == [True, False, True, False]
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    last = "step-000003" if passes > 1 else "step-000002"  # (3: between two passes)
    for ckpt in list_checkpoints(resumed):  # as if the run had died right after it
        if ckpt.name > last:
            shutil.rmtree(ckpt)
    if passes > 1:
        assert (resumed / "checkpoints" / last / "loss_state.json").is_file()
    shutil.rmtree(resumed / "final")
    cfg = _cfg(model, resumed, passes)
    cfg.resume = "latest"
    main(cfg)
    again = rows(resumed)
    for key in ("loss", "reward", "kl", "grad_norm"):
        assert [r[key] for r in again] == [r[key] for r in steps], key


def test_long_prompts_are_skipped_and_bad_flags_refused(tiny_chat_model, tmp_path, capsys):
    model = tiny_chat_model(context_length=64)  # a chat prompt of ~60 tokens leaves no room
    cfg = tiny_cfg(model, tmp_path / "r", max_new_tokens=24)
    with pytest.raises(ValueError, match="no prompt fits the context"):
        main(cfg)
    assert "skipped 8 prompt(s) longer than the 40 tokens" in capsys.readouterr().out
    for change, message in [({"task": "chess"}, "--task must be one of"),
                            ({"grpo": GRPOSettings(rewards="answer,vibes")}, "unknown reward"),
                            ({"grpo": GRPOSettings(rewards="reward_model")},
                             "needs --grpo.reward_model"),
                            ({"grpo": GRPOSettings(reward_model="runs/rm/final")},
                             "has no reward_model term"),
                            ({"grpo": GRPOSettings(top_p=0.0)}, "top_p must be in"),
                            ({"grpo": GRPOSettings(iterations=0)}, "iterations must be")]:
        bad = tiny_cfg(model, tmp_path / "bad")
        for k, v in change.items():
            setattr(bad, k, v)
        with pytest.raises(ValueError, match=message):
            main(bad)


@pytest.mark.slow
def test_two_processes_train_one_adapter(tiny_chat_model, tmp_path):
    """torchrun with DDP (gloo): each rank samples its own prompts' groups, the gradients are
    averaged, and rank 0 writes one run."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    model = tiny_chat_model()
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + (os.getpid() + 7) % 1000), "-m", "scratchlm",
           "finetune", "grpo", "--model", str(model), "--out", str(out), "--train_size", "8",
           "--test_size", "2", "--grpo.group_size", "3", "--grpo.max_new_tokens", "6",
           "--grpo.temperature", "4", "--grpo.rewards", "length,answer",
           "--grpo.length_penalty", "0.1", "--lora.rank", "4", "--train.max_steps", "2",
           "--train.batch_size", "2", "--train.lr", "1e-2", "--train.eval_every", "2",
           "--train.save_every", "2", "--train.tensorboard", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(rows(out)) == 2
    assert (out / "final" / "adapter" / "adapter.safetensors").is_file()
    assert json.loads((out / "grpo.json").read_text())["heldout"] == 2


@pytest.mark.parametrize("lora", [LoraConfig(rank=0), LoraConfig(rank=4, alpha=8,
                                                                  quantize_base="nf4")],
                         ids=["full-finetuning", "qlora"])
def test_full_finetuning_and_qlora_train(tiny_chat_model, tmp_path, lora):
    cfg = tiny_cfg(tiny_chat_model(), tmp_path / "r")  # beta 0.04: a reference is needed
    cfg.lora = lora
    cfg.train.max_steps = 2
    main(cfg)
    steps = rows(tmp_path / "r")
    assert len(steps) == 2 and any(float(r["grad_norm"]) > 0 for r in steps)


def _reward_model(chat_model, folder):
    """A tiny random reward model (one-number head) with the chat model's tokenizer, saved as
    `scratchlm finetune reward` saves its final/."""
    import torch

    from scratchlm.finetune.reward import RewardScorer
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(chat_model))
    torch.manual_seed(1)
    model.out_head = torch.nn.Linear(model.cfg.n_embd, 1)
    RewardScorer(model, tok, "chat").save(folder)
    return folder


def test_rlhf_on_instructions_with_a_reward_model(tiny_chat_model, tmp_path):
    """--task preference: the instructions of a preference file, rewarded by a reward model
    folder (RLHF); held out, the mean reward of greedy answers; no answer accuracy."""
    model = tiny_chat_model()
    rm = _reward_model(model, tmp_path / "rm")
    data = tmp_path / "prefs.json"
    data.write_text(json.dumps([{"instruction": f"Rewrite politely: task {i}.", "input": "",
                                 "output": "Please.", "chosen": "Please.", "rejected": "No."}
                                for i in range(40)]))
    cfg = tiny_cfg(model, tmp_path / "r", rewards="reward_model", reward_model=str(rm))
    cfg.task, cfg.data, cfg.train.max_steps = "preference", str(data), 2
    result = main(cfg)
    assert {"reward_before", "reward_after"} <= set(result) and result["heldout"] == 2
    logged = [r for r in csv.DictReader(open(tmp_path / "r" / "metrics.csv"))]
    assert any(r["heldout_reward"] for r in logged)
    assert all(not r["accuracy"] and not r["heldout_accuracy"] for r in logged)
    assert all(not s["reference"] for s in json.loads(
        (tmp_path / "r" / "grpo.json").read_text())["samples"])
    for change, message in [({"task": "preference"}, "has no answers to check"),
                            ({"data": str(data)}, "--data is read by --task preference")]:
        bad = tiny_cfg(model, tmp_path / "bad")
        for k, v in change.items():
            setattr(bad, k, v)
        with pytest.raises(ValueError, match=message):
            main(bad)
