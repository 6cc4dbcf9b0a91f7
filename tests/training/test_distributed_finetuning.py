"""The training contract under torchrun (gloo, 2 CPU processes): 2 ranks x batch 2 give the
losses and final weights of 1 rank x batch 4 for LoRA instruction SFT, DPO, the classifier and
the reward model, with DDP and with FSDP2 (sharded frozen base + LoRA; the adapter it saves
loads in one process and gives the merged model's logits); evaluation takes the true mean over
uneven shards with 2 and 3 ranks, a rank with nothing included."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT

RECIPES = {
    "instruct": ["finetune", "instruct", "--data", "instruction-data", "--limit", "40",
                 "--lora.rank", "4", "--test_responses", "false", "--train.lr", "0.05"],
    "dpo": ["finetune", "dpo", "--data", "instruction-data-with-preference", "--limit", "40",
            "--lora.rank", "4", "--test_responses", "false", "--train.lr", "0.05"],
    "classify": ["finetune", "classify", "--epochs", "1", "--lora.rank", "4",
                 "--train.lr", "0.05", "--eval_batches", "2"],
    "reward": ["finetune", "reward", "--data", "instruction-data-with-preference", "--limit",
               "40", "--lora.rank", "4", "--train.lr", "0.05"],
}
# SGD: the runs must agree in their gradients; Adam would turn float32 reduction-order noise in
# near-zero gradient entries into visible update differences (m / sqrt(v) ~ sign).
COMMON = ["--train.tensorboard", "false", "--train.log_every", "1", "--train.seed", "7",
          "--train.optimizer", "sgd"]


def _run(args, out, procs, strategy="ddp"):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "scratchlm"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
        "--master_port", str(29600 + os.getpid() % 1000), "-m", "scratchlm"]
    batch = str(4 // procs)
    r = subprocess.run([*launcher, *args, *COMMON, "--train.batch_size", batch,
                        "--train.strategy", strategy, "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _losses(run):
    with open(run / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r["loss"]]


def _weights(run):
    final = run / "final"
    files = [final / "adapter" / "adapter.safetensors", final / "model.safetensors"]
    return {f.name: load_file(f) for f in files if f.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("recipe,strategy", [(r, "ddp") for r in RECIPES] +
                         [("instruct", "fsdp"), ("classify", "fsdp"), ("reward", "fsdp")])
def test_two_ranks_equal_one_rank_with_twice_the_batch(recipe, strategy, tiny_chat_model,
                                                       classify_csv, tmp_path):
    model = tiny_chat_model(context_length=256)
    args = [*RECIPES[recipe], "--model", str(model)]
    if recipe == "classify":
        args += ["--data", str(classify_csv)]
    one = _run(args, tmp_path / "one", 1)
    two = _run(args, tmp_path / "two", 2, strategy)
    a, b = _losses(one), _losses(two)
    # DDP's all-reduce repeats the one-process arithmetic; FSDP2's sharded gradients and their
    # fp32 norm (the clip scale) differ at ~1e-7 relative per step, which 16 SGD steps at lr
    # 0.05 grow to ~2e-5. A wrong scale or a missing reduction is off by far more.
    tol = 1e-5 if strategy == "ddp" else 1e-4
    assert len(a) >= 3 and [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert x == pytest.approx(y, abs=tol), (a, b)
    wa, wb = _weights(one), _weights(two)
    assert wa and wa.keys() == wb.keys()
    for name in wa:
        for key, t in wa[name].items():
            torch.testing.assert_close(t, wb[name][key], atol=tol, rtol=tol, msg=key)


EVAL_SCRIPT = r"""
import sys, torch, torch.distributed as dist
from torch import nn
sys.path.insert(0, {root!r})
from scratchlm.training.evaluation import evaluate_loss
from scratchlm.training.runtime import setup_runtime

class MeanLoss(nn.Module):  # the loss of a batch is the mean of its targets
    def forward(self, x, y):
        return y[y != -100].float().mean() if (y != -100).any() else torch.zeros(())
    def batch_weight(self, x, y):
        return (y != -100).sum()

rt = setup_runtime("fp32", "cpu")
# rank r holds r + 1 batches of uneven lengths (rank 2 of 3 holds none when told to)
empty = int(sys.argv[1])
mine = [] if rt.rank == empty else [
    (torch.zeros(1), torch.tensor([10.0 * rt.rank + i] * (i + 1) + [-100] * 2))
    for i in range(rt.rank + 1)]
got = evaluate_loss(MeanLoss(), mine, rt)
if rt.rank == 0:
    print("RESULT", got)
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("ranks,empty", [(2, -1), (3, -1), (3, 2), (2, 0)])
def test_evaluation_is_the_true_mean_over_uneven_shards(tmp_path, ranks, empty):
    script = tmp_path / "eval.py"
    script.write_text(EVAL_SCRIPT.format(root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                        str(ranks), "--master_port", str(29700 + os.getpid() % 1000 + ranks),
                        str(script), str(empty)], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    values = []
    for rank in range(ranks):
        if rank != empty:
            for i in range(rank + 1):
                values += [10.0 * rank + i] * (i + 1)
    got = float(r.stdout.split("RESULT")[1].split()[0])
    assert got == pytest.approx(sum(values) / len(values), rel=1e-9)


@pytest.mark.slow
def test_an_fsdp_lora_adapter_loads_in_one_process(tiny_chat_model, tmp_path):
    from scratchlm.finetune.lora import load_adapter
    from scratchlm.checkpoints.load import load_pretrained

    model = tiny_chat_model(context_length=256)
    run = _run([*RECIPES["instruct"], "--model", str(model), "--train.max_steps", "2"],
               tmp_path / "fsdp", 2, "fsdp")
    tuned = load_adapter(load_pretrained(str(model)), run / "final" / "adapter")
    merged = load_pretrained(str(run / "final"))
    x = torch.randint(0, merged.cfg.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(tuned(x), merged(x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(load_pretrained(str(model))(x), merged(x), atol=1e-4)
