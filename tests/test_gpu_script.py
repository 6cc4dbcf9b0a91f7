"""``benchmarks/gpu.py --dry-run``: the GPU check runs end to end on the CPU, so a GPU's short
time is not spent finding a broken script."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_script_dry_run():
    r = subprocess.run([sys.executable, "benchmarks/gpu.py", "--dry-run"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = r.stdout.split("| what | ours |", 1)[1]
    for what in ("pytest -m gpu", "train step", "MFU", "LoRA step", "decode batch 1",
                 "decode batch 32", "ddp", "fsdp", "speedrun gpu-24gb pretraining"):
        assert what in table, what
    assert "| failed |" not in table and "skipped:" not in table, table


def test_gpu_script_refuses_a_machine_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a machine without CUDA")
    r = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "--dry-run" in r.stdout
