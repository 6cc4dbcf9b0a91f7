"""Every training recipe keeps pretraining's contract for Ctrl-C, through the command line as a
user runs it: SIGINT finishes the step, saves a checkpoint and exits 130 without writing
``final/``; ``--resume`` then ends with the weights of a run that was never interrupted (bit
for bit: one thread, CPU fp32). Finetune instruct and classify are interrupted for real; GRPO
reports the steps it ran; the other recipes take ``--resume`` and continue exactly."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from scratchlm.training.checkpoint import latest_checkpoint, list_checkpoints
from scratchlm.training.config import TrainConfig

# one thread: two processes add up the same floats in the same order
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMMON = ["--train.tensorboard", "false", "--train.log_every", "1", "--train.batch_size", "2",
          "--train.seed", "7"]


def _args(recipe: str, model, classify_csv) -> list[str]:
    if recipe == "instruct":  # eval_every 2 stays 2 for any max_steps >= 8 (set_epochs)
        return ["finetune", "instruct", "--model", str(model), "--data", "instruction-data",
                "--limit", "40", "--lora.rank", "4", "--test_responses", "false",
                "--max_new_tokens", "4", "--train.lr", "1e-2", "--train.eval_every", "2",
                "--train.eval_batches", "1"]
    return ["finetune", "classify", "--model", str(model), "--data", str(classify_csv),
            "--eval_batches", "2", "--train.lr", "1e-3"]


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "scratchlm", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scratchlm", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def losses(run) -> list[tuple[int, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f) if r["loss"]]


def final_weights(run) -> dict[str, torch.Tensor]:
    """Every tensor under ``final/`` (the adapter, trained tensors or whole model), by file."""
    return {f"{f.relative_to(run / 'final')}:{k}": t
            for f in sorted((run / "final").rglob("*.safetensors"))
            for k, t in load_file(f).items()}


def interrupt(args: list[str], run, after_rows: int = 3) -> tuple[int, str]:
    """Start ``scratchlm ARGS`` for (practically) ever, send SIGINT once it has logged
    ``after_rows`` metrics rows; (the step it stopped at, its stderr)."""
    p = _cli(*args, "--out", str(run), "--train.max_steps", "100000",
             "--train.save_every", "100000")
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if (run / "metrics.csv").is_file() and len(losses(run)) >= after_rows:
            break
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, (out + err)[-3000:]
    ckpt = latest_checkpoint(run)
    assert ckpt is not None, err[-3000:]
    return int(ckpt.name.split("-")[1]), out + err


@pytest.mark.parametrize("recipe", ["instruct", "classify"])
def test_ctrl_c_saves_exits_130_without_final_and_resume_is_exact(recipe, tiny_chat_model,
                                                                   classify_csv, tmp_path):
    args = [*_args(recipe, tiny_chat_model(), classify_csv), *COMMON]
    run = tmp_path / "interrupted"
    step, said = interrupt(args, run)
    assert step >= 3
    assert f"stopped after step {step} of 100000" in said and "--resume" in said
    assert not (run / "final").exists()  # no model from a partly trained run
    assert [s for s, _ in losses(run)] == list(range(1, step + 1))

    # max_steps is free on resume: both finish 5 steps later
    end = ["--train.max_steps", str(step + 5)]
    r = _run(*args, "--out", str(run), *end, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / f'step-{step:06d}'}" in r.stdout + r.stderr
    straight = tmp_path / "straight"
    r = _run(*args, "--out", str(straight), *end)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(run) == losses(straight) and len(losses(run)) == step + 5
    a, b = final_weights(run), final_weights(straight)
    assert a and a.keys() == b.keys()
    for name, t in a.items():
        assert torch.equal(t, b[name]), name  # bit for bit


def test_grpo_ctrl_c_reports_the_steps_it_ran(tiny_chat_model, tmp_path):
    """It said "after 6 steps" (the planned steps) when 3 had run, and wrote final/."""
    args = ["finetune", "grpo", "--model", str(tiny_chat_model()), "--train_size", "8",
            "--test_size", "2", "--grpo.group_size", "4", "--grpo.max_new_tokens", "6",
            "--grpo.temperature", "4", "--grpo.rewards", "length,answer",
            "--grpo.length_penalty", "0.1", "--lora.rank", "4", "--lora.alpha", "8",
            "--train.lr", "1e-2", "--train.eval_every", "100000", *COMMON]
    run = tmp_path / "grpo"
    step, said = interrupt(args, run)
    assert f"stopped after step {step} of 100000" in said
    assert "after 100000 steps" not in said and not (run / "final").exists()
    r = _run(*args, "--out", str(run), "--train.max_steps", str(step + 1), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"after {step + 1} steps" in r.stdout + r.stderr  # the steps the model has taken
    assert (run / "final" / "adapter" / "adapter.safetensors").is_file()


TRAINING_COMMANDS = ["pretrain", "finetune classify", "finetune instruct", "finetune dpo",
                     "finetune reward", "finetune tokens", "finetune prompt", "finetune grpo",
                     "distill"]


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_every_training_command_takes_resume(command):
    from scratchlm.cli import resolve

    assert resolve([*command.split(), "--resume"]).resume == "latest"
    assert resolve([*command.split(), "--resume", "runs/x/checkpoints/step-000004"]).resume \
        == "runs/x/checkpoints/step-000004"
    assert resolve(command.split()).resume == ""


def _tiny_train(**kw) -> TrainConfig:
    base = dict(max_steps=4, batch_size=2, lr=1e-2, schedule="constant", warmup_steps=0,
                log_every=1, eval_every=2, eval_batches=1, save_every=2, keep_last=10,
                keep_checkpoints=True, tensorboard=False, seed=7)
    return TrainConfig(**{**base, **kw})


def _conll(path):
    words = [("Paris", "B-LOC"), ("is", "O"), ("big", "O"), ("Anna", "B-PER"), ("said", "O")]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(30):
            for w, t in words[i % 3:] + words[:i % 3]:
                f.write(f"{w}\t{t}\n")
            f.write("\n")
    return path


def _recipe_cfg(name: str, model, out, tmp_path, classify_csv):
    """(main, config) of a small run of each recipe not interrupted for real above."""
    from scratchlm.finetune.config import LoraConfig

    lora = LoraConfig(rank=4, alpha=8)
    if name == "dpo":
        from scratchlm.recipes.finetune_dpo import DPOConfig, main

        return main, DPOConfig(model=str(model), out=str(out), limit=40, lora=lora,
                               test_responses=False, train=_tiny_train())
    if name == "reward":
        from scratchlm.recipes.finetune_reward import RewardConfig, main

        return main, RewardConfig(model=str(model), out=str(out), limit=40, lora=lora,
                                  train=_tiny_train())
    if name == "prompt":
        from scratchlm.recipes.finetune_prompt import PromptConfig, main

        return main, PromptConfig(model=str(model), out=str(out), data=str(classify_csv),
                                  num_virtual_tokens=4, max_length=16, train=_tiny_train())
    if name == "tokens":
        from scratchlm.recipes.finetune_tokens import TaggingConfig, main

        return main, TaggingConfig(model=str(model), out=str(out), lora=lora,
                                   data=str(_conll(tmp_path / "t.conll")), train=_tiny_train())
    from scratchlm.recipes.distill import DistillConfig, main

    return main, DistillConfig(teacher=str(model), student_layers=1, data=["the-verdict"],
                               out=str(out), context_length=32, speed_batches=1,
                               train=_tiny_train())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpo", "reward", "prompt", "tokens", "distill"])
def test_the_other_recipes_resume_exactly(name, tiny_chat_model, classify_csv, tmp_path):
    model = tiny_chat_model()
    straight = tmp_path / "straight"
    main, cfg = _recipe_cfg(name, model, straight, tmp_path, classify_csv)
    main(cfg)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for ckpt in list_checkpoints(resumed):  # as if the run had died right after step 2
        if ckpt.name > "step-000002":
            shutil.rmtree(ckpt)
    shutil.rmtree(resumed / "final")
    main, cfg = _recipe_cfg(name, model, resumed, tmp_path, classify_csv)
    cfg.resume = "latest"
    main(cfg)
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 4
    a, b = final_weights(resumed), final_weights(straight)
    assert a and a.keys() == b.keys()
    for key, t in a.items():
        assert torch.equal(t, b[key]), key
