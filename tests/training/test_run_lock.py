"""One run per folder: a run holds ``OUT/.lock`` (an exclusive flock with its pid) for its
life, so a second start or resume into the same ``--out`` is refused at once, naming the
holder; the kernel drops the lock when the holder exits, even by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from scratchlm.training.run_dir import (RunDirBusy, claim_run_dir, finish_run, lock_run_dir,
                                        release_run_dir)

HOLD = ("import sys\nfrom scratchlm.training.run_dir import claim_run_dir\n"
        "claim_run_dir(sys.argv[1])\nprint('held', flush=True)\nsys.stdin.read()\n")
TRY = ("import sys\nfrom scratchlm.training.run_dir import RunDirBusy, claim_run_dir\n"
       "try:\n    claim_run_dir(sys.argv[1], resume='latest')\nexcept RunDirBusy as e:\n"
       "    print(e)\nelse:\n    print('claimed')\n")


@pytest.fixture
def holder(tmp_path):
    """Another process that has claimed ``tmp_path / "run"`` and holds it until killed."""
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == "held"
    yield p, out
    p.kill()
    p.wait()


def _other_process_claims(out) -> str:
    return subprocess.run([sys.executable, "-c", TRY, str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120).stdout.strip()


def test_a_second_start_or_resume_is_refused_naming_the_holder(holder):
    p, out = holder
    for resume in (None, "latest"):  # two starts, or two resumes, at the same moment
        with pytest.raises(RunDirBusy, match=rf"{out} is in use by another run \(pid {p.pid}\)"):
            claim_run_dir(out, resume=resume)
    assert not (out / "metrics.csv").exists()


@pytest.mark.parametrize("command", [
    ["pretrain", "--model", "gpt-tiny", "--data", "the-verdict", "--context-length", "32"],
    ["finetune", "classify", "--resume"],  # training_session: before any model is loaded
], ids=["pretrain", "finetune-classify-resume"])
def test_the_cli_refuses_at_once_with_the_pid(holder, command):
    p, out = holder
    r = subprocess.run([sys.executable, "-m", "scratchlm", *command, "--train.max_steps", "2",
                        "--train.tensorboard", "false", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"in use by another run (pid {p.pid})" in r.stderr
    assert not (out / "metrics.csv").exists() and not (out / "checkpoints").exists()


def test_the_folder_is_free_once_the_holder_is_killed(holder):
    p, out = holder
    p.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel drops the lock
    p.wait()
    claim_run_dir(out)
    assert (out / ".lock").read_text().strip() == str(os.getpid())
    release_run_dir(out)


def test_this_process_may_claim_again_and_finish_run_lets_others_in(tmp_path):
    out = tmp_path / "run"
    claim_run_dir(out)
    claim_run_dir(out, resume="latest")  # an in-process resume does not refuse itself
    assert _other_process_claims(out) == f"{out} is in use by another run (pid {os.getpid()}); " \
        "wait for it to end, or choose another --out"
    finish_run(out, keep_checkpoints=False)
    assert _other_process_claims(out) == "claimed"


def test_a_refused_claim_does_not_keep_the_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("step,loss\n")
    with pytest.raises(FileExistsError, match="holds a previous run"):
        claim_run_dir(out)
    assert _other_process_claims(out) == "claimed"
    lock_run_dir(out)  # and it can be taken again afterwards
    release_run_dir(out)


def test_a_failed_pretrain_run_lets_others_in(tmp_path):
    from scratchlm.recipes.pretrain import PretrainConfig, main
    from scratchlm.training.config import TrainConfig

    out = tmp_path / "run"
    cfg = PretrainConfig(out=str(out), model="gpt-tiny", context_length=32, sample_tokens=0,
                         resume="latest", train=TrainConfig(max_steps=2, tensorboard=False))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        main(cfg)  # fails after claiming the folder
    assert _other_process_claims(out) == "claimed"
