"""Nothing lost: a second run never writes into a first one's folder, a NaN never reaches a
checkpoint, a resume refuses what would make it inexact, and a damaged checkpoint is named,
not loaded."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import ROOT
from scratchlm.recipes.pretrain import PretrainConfig, main
from scratchlm.training.checkpoint import (CheckpointLoadError, latest_checkpoint,
                                           list_checkpoints, load_checkpoint)
from scratchlm.training.loop import TrainConfig, TrainingDiverged, fit
from scratchlm.training.runtime import setup_runtime

TINY = dict(model="gpt-tiny", data=["the-verdict"], context_length=32, sample_tokens=0)


def tiny_cfg(out, **train):
    kw = dict(max_steps=4, batch_size=4, eval_every=4, save_every=2, keep_last=10, keep_checkpoints=True,
              log_every=1, warmup_steps=1, eval_batches=1, tensorboard=False)
    kw.update(train)
    return PretrainConfig(out=str(out), **TINY, train=TrainConfig(**kw))


def rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["loss"]]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "first"
    main(tiny_cfg(run, max_steps=6))
    return run


def test_a_second_run_into_a_used_folder_is_refused_then_overwrites(first_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(first_run, run)
    before = (run / "metrics.csv").read_bytes(), [p.name for p in list_checkpoints(run)]
    with pytest.raises(FileExistsError, match=rf"{run} holds a previous run.*--resume.*--overwrite"):
        main(tiny_cfg(run))
    assert ((run / "metrics.csv").read_bytes(), [p.name for p in list_checkpoints(run)]) == before
    cfg = tiny_cfg(run)
    cfg.overwrite = True
    main(cfg)  # the old run's step-6 checkpoint must not survive into the new 4-step run
    assert [p.name for p in list_checkpoints(run)] == ["step-000002", "step-000004"]
    assert [r["step"] for r in rows(run)] == ["1", "2", "3", "4"]


class Toy(nn.Module):
    """A linear regression whose loss turns NaN at the optimizer steps in ``bad``."""

    def __init__(self, bad=()):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.bad, self.calls = set(bad), 0

    def forward(self, x, y):
        self.calls += 1
        loss = ((self.lin(x).squeeze(-1) - y) ** 2).mean()
        return loss * float("nan") if self.calls in self.bad else loss

    def batch_weight(self, x, y):
        return torch.tensor(len(y))


def _fit(tmp_path, bad, **train):
    torch.manual_seed(0)
    data = [(torch.randn(4), torch.randn(())) for _ in range(64)]
    toy = Toy(bad)
    opt = torch.optim.SGD(toy.parameters(), lr=0.01)
    cfg = TrainConfig(max_steps=6, batch_size=4, save_every=2, eval_every=100, log_every=1,
                      tensorboard=False, **train)
    return toy, fit(toy, toy, opt, data, None, cfg, setup_runtime("fp32", "cpu", 0),
                    tmp_path, {"toy": 1})


def test_a_nan_loss_stops_the_run_before_a_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"step 3: the loss is nan.*before writing a "
                                               r"checkpoint.*last good checkpoint is .*step-000002"):
        _fit(tmp_path, bad={3})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]


def test_skip_nonfinite_skips_that_many_steps_without_an_update(tmp_path):
    toy, result = _fit(tmp_path / "a", bad={3, 5}, skip_nonfinite=2)
    assert result.step == 6 and all(torch.isfinite(p).all() for p in toy.parameters())
    state = load_checkpoint(latest_checkpoint(tmp_path / "a"), Toy(), restore_rng=False)
    assert state["step"] == 6
    with pytest.raises(TrainingDiverged):
        _fit(tmp_path / "b", bad={3, 5}, skip_nonfinite=1)


def test_a_diverged_cli_run_exits_non_zero(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scratchlm", "pretrain", "--model", "gpt-tiny",
                        "--data", "the-verdict", "--context-length", "32", "--sample-tokens", "0",
                        "--train.batch_size", "2", "--train.max_steps", "6",
                        "--train.lr", "1e38", "--train.grad_clip", "0", "--train.warmup_steps",
                        "0", "--train.tensorboard", "false", "--out", str(tmp_path / "r")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: step" in r.stderr and "Training stopped before writing" in r.stderr
    assert "Traceback" not in r.stderr
    for ckpt in list_checkpoints(tmp_path / "r"):
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["step"] < 6


@pytest.mark.parametrize("change,named", [
    (dict(batch_size=2), "train.batch_size: 4 -> 2"),
    (dict(lr=1e-3), "train.lr: 0.0004 -> 0.001"),
    (dict(seed=7), "train.seed: 123 -> 7"),
])
def test_resume_refuses_settings_that_break_exactness(first_run, tmp_path, change, named):
    run = tmp_path / "run"
    shutil.copytree(first_run, run)
    cfg = tiny_cfg(run, max_steps=8, **change)
    cfg.resume = "latest"
    with pytest.raises(CheckpointLoadError, match=rf"{named}.*--train.resume_check false"):
        main(cfg)
    cfg.train.resume_check = False
    main(cfg)  # told otherwise: it continues
    assert latest_checkpoint(run).name == "step-000008"


def test_resume_refuses_another_model_shape_and_data(first_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(first_run, run)
    cfg = tiny_cfg(run, max_steps=8)
    cfg.resume, cfg.n_head = "latest", 4  # the same weight shapes: only the config tells
    with pytest.raises(CheckpointLoadError, match="model_config.n_head: 2 -> 4"):
        main(cfg)
    cfg = tiny_cfg(run, max_steps=8)
    cfg.resume, cfg.data = "latest", ["tinyshakespeare"]
    with pytest.raises(CheckpointLoadError, match=r"data: \['the-verdict'\] -> "):
        main(cfg)
    cfg = tiny_cfg(run, max_steps=8, log_every=2, eval_every=2, keep_last=3)
    cfg.resume = "latest"
    main(cfg)  # how often it logs and saves, and how long it runs, may change


@pytest.mark.parametrize("damage,message", [
    ("optimizer", r"optimizer.pt: missing; the optimizer state is needed"),
    ("rng", r"rng.pt: missing; the random number generator state"),
    ("flip", r"model.safetensors: its sha256 differs"),
    ("truncate", r"model.safetensors: not a readable safetensors file"),
    ("state", r"trainer_state.json: not valid JSON"),
    ("pickle", r"optimizer.pt: refused to load"),
])
def test_a_damaged_checkpoint_is_named_not_loaded(first_run, tmp_path, damage, message):
    run = tmp_path / "run"
    shutil.copytree(first_run, run)
    ckpt = latest_checkpoint(run)
    if damage in ("optimizer", "rng", "truncate", "state", "pickle"):
        (ckpt / "manifest.json").unlink()  # as a checkpoint written before manifests
    if damage == "optimizer":
        (ckpt / "optimizer.pt").unlink()
    elif damage == "rng":
        (ckpt / "rng.pt").unlink()
    elif damage == "flip":
        data = bytearray((ckpt / "model.safetensors").read_bytes())
        data[-5] ^= 0xFF
        (ckpt / "model.safetensors").write_bytes(bytes(data))
    elif damage == "truncate":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "state":
        (ckpt / "trainer_state.json").write_text('{"step": 6,')
    elif damage == "pickle":
        import pickle

        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))

        (ckpt / "optimizer.pt").write_bytes(pickle.dumps({"state": Evil()}))
    cfg = tiny_cfg(run, max_steps=8)
    cfg.resume = "latest"
    with pytest.raises(CheckpointLoadError, match=message):
        main(cfg)


def test_the_cli_turns_damaged_files_into_one_line(first_run, tmp_path):
    final = tmp_path / "final"
    shutil.copytree(first_run / "final", final)
    (final / "model.safetensors").write_bytes(b"\x00garbage")
    r = subprocess.run([sys.executable, "-m", "scratchlm", "generate", "--model", str(final),
                        "--prompt", "Hi", "--max-new-tokens", "2"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"{final / 'model.safetensors'}: not a readable safetensors file" in r.stderr
    (final / "config.json").write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "scratchlm", "generate", "--model", str(final),
                        "--prompt", "Hi"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"{final / 'config.json'}: not valid JSON" in r.stderr
