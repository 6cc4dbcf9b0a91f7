"""The pretraining recipe end to end on a tiny GPT: outputs, exact resume, crashes mid-save,
Ctrl-C, and torch.distributed (DDP and FSDP2 with gloo on CPU)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import ROOT
from scratchlm.recipes.pretrain import PretrainConfig, main
from scratchlm.training.checkpoint import latest_checkpoint, list_checkpoints
from scratchlm.training.loop import TrainConfig

TINY = dict(model="gpt-tiny", data=["the-verdict"], context_length=32, drop_rate=0.1,
            sample_tokens=0)


def tiny_cfg(out, **train):
    kw = dict(max_steps=8, batch_size=4, eval_every=4, save_every=2, keep_last=10, keep_checkpoints=True,
              log_every=1, warmup_steps=2, eval_batches=2, tensorboard=False)
    kw.update(train)
    return PretrainConfig(out=str(out), **TINY, train=TrainConfig(**kw))


def losses(run):
    with open(run / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r["loss"]]


def test_outputs_and_loss_goes_down(tmp_path):
    res = main(tiny_cfg(tmp_path / "a", max_steps=30, eval_every=10, save_every=10, lr=3e-3,
                        tensorboard=True))
    run = tmp_path / "a"
    for name in ("config.json", "metrics.csv", "loss.png", "final/model.safetensors"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    assert [p.name for p in list_checkpoints(run)] == ["step-000010", "step-000020", "step-000030"]
    assert res.train_losses[-1] < res.train_losses[0] - 1.0
    from scratchlm.checkpoints.load import load_pretrained

    model = load_pretrained(str(run / "final"))
    assert model.cfg.context_length == 32 and model.cfg.n_layer == 2

    # final/ is self-contained: generate works with no cache, no mirror and no network
    import os
    import subprocess
    import sys

    env = {**os.environ, "SCRATCHLM_CACHE": str(tmp_path / "empty-cache"),
           "SCRATCHLM_MIRROR": str(tmp_path / "empty-mirror"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    r = subprocess.run([sys.executable, "-m", "scratchlm", "generate", "--model",
                        str(run / "final"), "--prompt", "Every effort", "--max-new-tokens", "3"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Every effort")


def test_resume_is_exact(tmp_path):
    straight = tmp_path / "straight"
    main(tiny_cfg(straight))
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for ckpt in list_checkpoints(resumed):  # as if the run had died right after step 4
        if ckpt.name > "step-000004":
            shutil.rmtree(ckpt)
    shutil.rmtree(resumed / "final")
    cfg = tiny_cfg(resumed)
    cfg.resume = "latest"
    main(cfg)
    assert losses(resumed) == losses(straight)
    assert len(losses(resumed)) == 8


def test_keep_last(tmp_path):
    main(tiny_cfg(tmp_path, keep_last=2))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000006", "step-000008"]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    from scratchlm.recipes.pretrain import PretrainConfig, main
    from scratchlm.training.loop import TrainConfig
    real_save = torch.save
    def save(obj, path, *a, **k):
        if "step-000006.tmp" in str(path):   # die half way through writing step 6
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, path, *a, **k)
    torch.save = save
    main(PretrainConfig(out=sys.argv[1], model="gpt-tiny", data=["the-verdict"], context_length=32,
                        drop_rate=0.1, sample_tokens=0,
                        train=TrainConfig(max_steps=8, batch_size=4, eval_every=4, save_every=2,
                                          keep_last=10, keep_checkpoints=True, log_every=1, warmup_steps=2,
                                          eval_batches=2, tensorboard=False)))
""")


def test_sigkill_during_save_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "killed"
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert latest_checkpoint(run).name == "step-000004"
    assert (run / "checkpoints" / "step-000006.tmp").is_dir()  # the half-written one
    cfg = tiny_cfg(run)
    cfg.resume = "latest"
    main(cfg)
    assert not (run / "checkpoints" / "step-000006.tmp").exists()
    straight = tmp_path / "straight"
    main(tiny_cfg(straight))
    assert losses(run) == losses(straight)


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "scratchlm", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


TINY_FLAGS = ["--model", "gpt-tiny", "--data", "the-verdict", "--context-length", "32",
              "--sample-tokens", "0", "--train.batch_size", "4", "--train.log_every", "1",
              "--train.tensorboard", "false", "--train.eval_batches", "2"]


def test_ctrl_c_saves_a_checkpoint_then_resume_finishes(tmp_path):
    run = tmp_path / "ctrlc"
    p = _cli("pretrain", *TINY_FLAGS, "--out", str(run), "--train.max_steps", "100000",
             "--train.save_every", "100000", "--train.eval_every", "100000")
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / "metrics.csv").is_file() and len((run / "metrics.csv").read_text().splitlines()) > 3:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and int(ckpt.name.split("-")[1]) >= 3
    step = int(ckpt.name.split("-")[1])
    assert f"stopped after step {step} of 100000; the checkpoint {ckpt} holds it" in err
    assert not (run / "final").exists()  # no model from a partly trained run
    r = subprocess.run([sys.executable, "-m", "scratchlm", "pretrain", *TINY_FLAGS, "--out", str(run),
                        "--train.max_steps", str(step + 2), "--resume"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {ckpt}" in r.stderr + r.stdout
    # the run ended well: final/ holds the model and the checkpoints are gone (the interrupted
    # run above kept its own, which is how it resumed)
    assert "checkpoints removed" in r.stdout and latest_checkpoint(run) is None
    assert (run / "final" / "model.safetensors").is_file()
    assert (run / "final" / "encoder.json").is_file()  # GPT-2's vocabulary travels with it


def _torchrun(tmp_path, name, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000), "-m", "scratchlm", "pretrain",
           *TINY_FLAGS, "--out", str(tmp_path / name), "--train.max_steps", "4",
           "--train.eval_every", "2", "--train.save_every", "2", "--train.batch_size", "2",
           "--drop-rate", "0", "--train.warmup_steps", "2", *extra]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp_path / name


@pytest.mark.slow
def test_ddp_equals_one_process_with_twice_the_batch(tmp_path):
    ddp = _torchrun(tmp_path, "ddp")
    single = tmp_path / "single"
    cfg = tiny_cfg(single, max_steps=4, eval_every=2, save_every=2, batch_size=4)
    cfg.drop_rate = 0.0
    main(cfg)
    a, b = losses(ddp), losses(single)
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert x == pytest.approx(y, abs=1e-5)


@pytest.mark.slow
def test_fsdp_checkpoint_loads_in_one_process(tmp_path):
    run = _torchrun(tmp_path, "fsdp", "--train.strategy", "fsdp", "--train.keep_checkpoints",
                    "true")
    ckpt = latest_checkpoint(run)
    assert (ckpt / "sharded").is_dir()
    from scratchlm.models.gpt import GPT, GPTConfig
    from scratchlm.checkpoints.load import load_pretrained
    from scratchlm.training.checkpoint import load_checkpoint

    final = load_pretrained(str(run / "final"))
    fresh = GPT(GPTConfig(**{**final.cfg.to_dict()}))
    state = load_checkpoint(ckpt, fresh, restore_rng=False)
    assert state["step"] == 4
    for (k, v), w in zip(final.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(v, w), k


def test_resume_with_a_temporary_lr_scale(tmp_path):
    """--train.lr_scale 0.1 --train.lr_scale_steps 3 after resuming at step 4: steps 4-6 run at
    a tenth of the schedule, step 7 on is the schedule again; a resume inside the window stays
    in it."""
    from scratchlm.training.schedule import lr_at

    run = tmp_path / "run"
    main(tiny_cfg(run, max_steps=6, save_every=2))
    cfg = tiny_cfg(run, max_steps=10, save_every=2, lr_scale=0.1, lr_scale_steps=3)
    cfg.resume = str(run / "checkpoints" / "step-000004")
    main(cfg)

    def schedule(step):
        return lr_at(step, schedule="cosine", lr=cfg.train.lr, max_steps=10, warmup_steps=2,
                     min_lr=cfg.train.min_lr)

    with open(run / "metrics.csv", newline="") as f:
        lrs = {int(r["step"]) - 1: float(r["lr"]) for r in csv.DictReader(f) if r["lr"]}
    for step in range(4, 10):  # row "step" holds the rate of the update from step - 1
        scale = 0.1 if step < 7 else 1.0
        assert lrs[step] == pytest.approx(schedule(step) * scale), step
    # resuming from step 6 (inside the window) without the flags keeps the window
    again = tiny_cfg(run, max_steps=10, save_every=2)
    again.resume = str(run / "checkpoints" / "step-000006")
    main(again)
    with open(run / "metrics.csv", newline="") as f:
        lrs = {int(r["step"]) - 1: float(r["lr"]) for r in csv.DictReader(f) if r["lr"]}
    assert lrs[6] == pytest.approx(schedule(6) * 0.1) and lrs[7] == pytest.approx(schedule(7))


def test_pretrain_a_mixture_of_experts_gpt(tmp_path):
    from scratchlm.checkpoints.load import load_pretrained

    cfg = tiny_cfg(tmp_path / "moe", max_steps=6, save_every=6, eval_every=3, log_every=3,
                   lr=3e-3)
    cfg.moe_num_experts, cfg.moe_top_k, cfg.moe_capacity_factor = 4, 2, 1.25
    res = main(cfg)
    assert res.train_losses[-1] < res.train_losses[0]
    with open(tmp_path / "moe" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["expert_share"]]
    assert len(rows) == 2 and len(rows[0]["expert_share"].split()) == 4
    assert 0 <= float(rows[0]["expert_dropped_frac"]) < 1
    model = load_pretrained(str(tmp_path / "moe" / "final"))
    assert model.cfg.moe.num_experts == 4 and len(model.trf_blocks[0].ff.experts) == 4


@pytest.mark.parametrize("model", ["qwen3-tiny", "gemma3-tiny"])
def test_pretrain_other_families(tmp_path, model):
    """Any family's preset pretrains, and its final folder loads as that family."""
    from scratchlm.checkpoints.load import load_pretrained
    from scratchlm.models.registry import family_of

    cfg = tiny_cfg(tmp_path / model, max_steps=6, save_every=6, eval_every=3, log_every=3,
                   lr=3e-3)
    cfg.model, cfg.drop_rate = model, None
    res = main(cfg)
    assert res.train_losses[-1] < res.train_losses[0]
    loaded = load_pretrained(str(tmp_path / model / "final"))
    assert family_of(loaded).name == model.split("-")[0]


def test_gpt_only_flags_are_refused_for_other_families(tmp_path):
    cfg = tiny_cfg(tmp_path / "x", max_steps=1)
    cfg.model = "qwen3-tiny"  # TINY sets drop_rate
    with pytest.raises(ValueError, match="--drop_rate applies to GPT models only"):
        main(cfg)
