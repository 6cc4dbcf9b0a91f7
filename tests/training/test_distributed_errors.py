"""Failures under torchrun (gloo, 2 CPU processes): the rank that failed says so, with its rank,
and the run stops at once; a validation split with fewer windows than ranks evaluates to the
one-process loss instead of leaving one rank alone in a collective."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

FLAGS = ["--model", "gpt-tiny", "--data", "the-verdict", "--context-length", "32",
         "--sample-tokens", "0", "--train.log_every", "1", "--train.tensorboard", "false",
         "--train.eval_batches", "2", "--drop-rate", "0", "--train.warmup_steps", "2",
         "--train.max_steps", "2", "--train.eval_every", "2", "--train.save_every", "2"]
VAL_FRACTION = 0.01  # the-verdict's last 52 GPT-2 tokens: one 32-token window for 2 ranks

# Rank 1 fails in its second step while rank 0 waits for its gradients (loaded through
# PYTHONPATH before scratchlm, so loop.py imports the failing step)
FAIL_ON_RANK_1 = '''
import os
if os.environ.get("RANK") == "1":
    import scratchlm.training.step as step
    real, calls = step.train_step, []

    def train_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("injected failure in step 2")
        return real(*args, **kwargs)

    step.train_step = train_step
'''


def _torchrun(out, *extra, env=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",  # a free port
           "--nproc_per_node", "2", "-m", "scratchlm", "pretrain", *FLAGS, "--out", str(out),
           *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def _val_losses(run):
    with open(run / "metrics.csv", newline="") as f:
        return [float(r["val_loss"]) for r in csv.DictReader(f) if r.get("val_loss")]


def test_each_stderr_line_of_a_rank_carries_its_rank():
    from scratchlm.__main__ import RankLabelled

    out = io.StringIO()
    err = RankLabelled(out, "[rank1]: ")
    err.write("\rtraining:  50%")  # a progress bar redrawing its line: left alone
    err.write("\rtraining: 100%\n")
    print("scratchlm pretrain: error: why", file=err)
    err.write("[rank1]: Traceback (most recent call last):\n")  # torch labelled it already
    err.write("two\nlines\n")
    assert out.getvalue() == ("\rtraining:  50%\rtraining: 100%\n"
                              "[rank1]: scratchlm pretrain: error: why\n"
                              "[rank1]: Traceback (most recent call last):\n"
                              "[rank1]: two\n[rank1]: lines\n")


@pytest.mark.slow
def test_a_failing_rank_is_named_and_the_run_stops_at_once(tmp_path):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(FAIL_ON_RANK_1)
    path = os.pathsep.join([str(tmp_path / "inject"), os.environ.get("PYTHONPATH", "")])
    t0 = time.monotonic()
    r = _torchrun(tmp_path / "run", "--train.batch_size", "2", env={"PYTHONPATH": path})
    assert r.returncode != 0
    assert "[rank1]: scratchlm pretrain: error: injected failure in step 2" in r.stderr, \
        r.stderr[-3000:]
    assert time.monotonic() - t0 < 120  # not gloo's 30-minute timeout


@pytest.mark.slow
def test_a_validation_split_smaller_than_the_ranks_gives_the_one_process_loss(tmp_path):
    from scratchlm.data.pretrain import text_datasets
    from scratchlm.recipes.pretrain import PretrainConfig, main
    from scratchlm.tokenizers import get_tokenizer
    from scratchlm.training.loop import TrainConfig

    _, val = text_datasets(["the-verdict"], VAL_FRACTION, get_tokenizer("gpt2"), 32)
    assert len(val) == 1  # rank 1 holds no validation window
    r = _torchrun(tmp_path / "ddp", "--train.batch_size", "2", "--val_fraction",
                  str(VAL_FRACTION))
    assert r.returncode == 0, r.stderr[-3000:]
    single = tmp_path / "single"
    main(PretrainConfig(out=str(single), model="gpt-tiny", data=["the-verdict"],
                        context_length=32, drop_rate=0.0, sample_tokens=0,
                        val_fraction=VAL_FRACTION,
                        train=TrainConfig(max_steps=2, batch_size=4, eval_every=2, save_every=2,
                                          log_every=1, warmup_steps=2, eval_batches=2,
                                          tensorboard=False)))
    (ddp_loss,), (one_loss,) = _val_losses(tmp_path / "ddp"), _val_losses(single)
    assert math.isfinite(ddp_loss) and ddp_loss == pytest.approx(one_loss, abs=1e-5)
