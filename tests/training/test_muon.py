"""Muon (training/muon.py): the Newton-Schulz iteration against a written-out float64 one and
against PyTorch's copy of the reference; the update rule step by step; which parameters it
leaves to AdamW; the WSD schedule; and a tiny pretraining run with exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from scratchlm.training.muon import Muon, muon_param_groups, newton_schulz
from scratchlm.training.optim import build_optimizer, set_lr
from scratchlm.training.schedule import lr_at

A, B, C = 3.4445, -4.7750, 2.0315


def written_out(g: np.ndarray, steps: int = 5) -> np.ndarray:
    """The quintic Newton-Schulz iteration, spelled out in float64 numpy."""
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / max(np.linalg.norm(x), 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = A * x + (B * gram + C * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (32, 32)])
def test_newton_schulz_equals_the_written_out_iteration(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = newton_schulz(g)
    assert ours.shape == g.shape
    np.testing.assert_allclose(ours.numpy(), written_out(g.numpy()), atol=1e-10)
    # the point of it: singular values pulled from a wide spread to near 1
    s = torch.linalg.svdvals(ours)
    assert s.min() > 0.5 and s.max() < 1.3
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 3


def test_newton_schulz_equals_pytorchs_copy_of_the_reference():
    """torch.optim.Muon's iteration is the reference's (Keller Jordan's muon.py), in bfloat16."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    for shape in [(24, 40), (40, 24)]:
        g = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        peer = _zeropower_via_newtonschulz(g, (A, B, C), 5, 1e-7)
        ours = newton_schulz(g, dtype=torch.bfloat16)
        assert ours.dtype == peer.dtype == torch.bfloat16
        assert (ours.float() - peer.float()).abs().max() <= 1e-5


def test_the_update_rule_step_by_step():
    """Three steps of Muon on one matrix, against the rule written out in float64: an EMA
    momentum, a Nesterov look-ahead, the orthogonalisation and the shape scale."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(12, 8, dtype=torch.float64))
    opt = Muon([{"params": [w], "use_muon": True, "lr": 0.05, "momentum": 0.9}])
    ref, buf = w.detach().numpy().copy(), np.zeros((12, 8))
    for _ in range(3):
        g = torch.randn(12, 8, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + 0.1 * g.numpy()
        ref = ref - 0.05 * math.sqrt(12 / 8) * written_out(0.1 * g.numpy() + 0.9 * buf)
        np.testing.assert_allclose(w.detach().numpy(), ref, atol=1e-10)
        assert torch.equal(w.grad, g)  # the gradient is not modified in place


def test_trajectory_matches_pytorchs_muon():
    """torch.optim.Muon (a plain momentum sum, which only rescales the update the iteration
    normalises away) takes the same steps as ours, both orthogonalising in bfloat16."""
    torch.manual_seed(0)
    w0 = torch.randn(32, 16)
    ours, peer = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    a = Muon([{"params": [ours], "use_muon": True, "lr": 0.02}], ns_dtype=torch.bfloat16)
    b = torch.optim.Muon([peer], lr=0.02, weight_decay=0.0, momentum=0.95)
    for _ in range(5):
        g = torch.randn(32, 16)
        ours.grad, peer.grad = g.clone(), g.clone()
        a.step()
        b.step()
    moved = (peer - w0).abs().max().item()
    assert moved > 0.01
    assert (ours - peer).abs().max().item() <= 1e-5


def test_matrices_to_muon_the_rest_to_adamw():
    from scratchlm.models.registry import build_model, preset

    family, _ = preset("llama-tiny")
    model = build_model(family.config_cls.from_name("llama-tiny", tie_embeddings=False))
    groups = muon_param_groups(model, lr=1e-3, muon_lr=0.02, weight_decay=0.1)
    muon, head, rest = groups
    assert muon["use_muon"] and not head["use_muon"] and not rest["use_muon"]
    assert all(p.ndim == 2 for p in muon["params"])
    assert all(p.ndim == 1 or p is model.tok_emb.weight for p in rest["params"])
    assert head["params"] == [model.out_head.weight] and head["weight_decay"] == 0.1
    assert muon["lr_ratio"] == pytest.approx(20) and muon["weight_decay"] == 0.0
    n = sum(len(g["params"]) for g in groups)
    assert n == len([p for p in model.parameters() if p.requires_grad])
    # one optimizer; the schedule moves every group together
    opt = build_optimizer(model, "muon", lr=1e-3, muon_lr=0.02)
    set_lr(opt, 5e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 5e-4, 5e-4])


def test_lora_matrices_go_to_adamw():
    """LoRA's A (in, rank) and B (out, rank) are no (out, in) maps: Muon's shape scale would
    misjudge them, so they train with AdamW; the frozen base has no group."""
    from scratchlm.finetune.lora import apply_lora
    from scratchlm.models.registry import build_model, preset

    family, cfg = preset("llama-tiny")
    model = build_model(cfg)
    apply_lora(model, 4, 8.0, ("all",))
    groups = muon_param_groups(model, lr=1e-3, muon_lr=0.02, weight_decay=0.0)
    assert [g["use_muon"] for g in groups] == [False]
    assert len(groups[0]["params"]) == len([p for p in model.parameters() if p.requires_grad])


def test_muon_refuses_what_it_cannot_update():
    with pytest.raises(ValueError, match="2-D"):
        Muon([{"params": [nn.Parameter(torch.zeros(4))], "use_muon": True}])
    with pytest.raises(ValueError, match="use_muon"):
        Muon([{"params": [nn.Parameter(torch.zeros(4, 4))]}])
    from scratchlm.training.config import TrainConfig

    with pytest.raises(ValueError, match="muon_lr applies to --train.optimizer muon"):
        TrainConfig(muon_lr=0.01)
    with pytest.raises(ValueError, match="decay_fraction applies to --train.schedule wsd"):
        TrainConfig(decay_fraction=0.3)


def test_wsd_schedule():
    kw = dict(lr=1.0, max_steps=100, warmup_steps=10, min_lr=0.0, decay_fraction=0.2)
    assert lr_at(5, schedule="wsd", **kw) == pytest.approx(0.6)  # warm-up as the others
    assert [lr_at(s, schedule="wsd", **kw) for s in (10, 50, 79)] == [1.0, 1.0, 1.0]
    assert lr_at(80, schedule="wsd", **kw) == 1.0
    assert lr_at(90, schedule="wsd", **kw) == pytest.approx(0.5)
    assert lr_at(99, schedule="wsd", **kw) == pytest.approx(0.05)
    assert lr_at(100, schedule="wsd", **kw) == 0.0
    # the stable phase does not depend on the horizon
    assert lr_at(150, schedule="wsd", **{**kw, "max_steps": 1000}) == 1.0


def test_pretrain_with_muon_and_wsd_resumes_exactly(tmp_path):
    """A Llama-shaped model pretrained with Muon and WSD; killed after step 3 and resumed, it
    logs the losses of the run that never stopped (the momentum and Adam moments resume)."""
    import csv
    import shutil

    from scratchlm.recipes.pretrain import PretrainConfig, main
    from scratchlm.training.checkpoint import list_checkpoints
    from scratchlm.training.loop import TrainConfig

    def cfg(out):
        train = TrainConfig(max_steps=6, batch_size=4, eval_every=3, save_every=3, keep_last=10,
                            keep_checkpoints=True, log_every=1, warmup_steps=1, eval_batches=1,
                            tensorboard=False, optimizer="muon", schedule="wsd", lr=3e-3,
                            decay_fraction=0.5)
        return PretrainConfig(out=str(out), model="llama-tiny", data=["the-verdict"],
                              context_length=32, sample_tokens=0, train=train)

    def losses(run):
        with open(run / "metrics.csv", newline="") as f:
            return [(r["step"], r["loss"], r["lr"]) for r in csv.DictReader(f) if r["loss"]]

    straight = tmp_path / "straight"
    res = main(cfg(straight))
    assert res.train_losses[-1] < res.train_losses[0]
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(list_checkpoints(resumed)[-1])
    shutil.rmtree(resumed / "final")
    again = cfg(resumed)
    again.resume = "latest"
    main(again)
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 6


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_muon_on_two_processes_equals_one_with_twice_the_batch(tmp_path, strategy):
    """DDP: each rank orthogonalises the averaged gradient. FSDP2: the row shards of a matrix
    are gathered for the orthogonalisation and each rank keeps its rows. Both give the losses
    of one process with the whole batch."""
    import csv
    import os
    import subprocess
    import sys

    from conftest import ROOT

    flags = ["--model", "llama-tiny", "--data", "the-verdict", "--context_length", "32",
             "--sample_tokens", "0", "--train.max_steps", "4", "--train.eval_every", "2",
             "--train.save_every", "2", "--train.warmup_steps", "1", "--train.log_every", "1",
             "--train.optimizer", "muon", "--train.tensorboard", "false", "--train.lr", "3e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29700 + os.getpid() % 1000), "-m", "scratchlm", "pretrain",
           *flags, "--out", str(tmp_path / "two"), "--train.batch_size", "2",
           "--train.strategy", strategy]
    one = [sys.executable, "-m", "scratchlm", "pretrain", *flags, "--out", str(tmp_path / "one"),
           "--train.batch_size", "4"]
    for cmd in (two, one):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]

    def losses(run):
        with open(run / "metrics.csv", newline="") as f:
            return [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]

    a, b = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, abs=1e-5)
