"""``scratchlm plan``: hand-computed parts, and the predicted peak against the tensor memory
measured (``MemoryTracker``) during a real training step on CPU."""

from __future__ import annotations

import pytest
import torch

from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.models.llama import Llama, LlamaConfig
from scratchlm.training.losses import CausalLMLoss
from scratchlm.training.memory import MemoryTracker
from scratchlm.training.optim import build_optimizer
from scratchlm.training.planner import plan


def test_parts_by_hand_for_gpt2_124m():
    cfg = GPTConfig.from_name("gpt2-124m")
    p = plan(cfg, "full", batch=8, context=1024, tokens=10**9, peak_tflops=100, mfu=0.5,
             gpu_memory_gib=80)
    n = 124_439_808  # GPT-2 small with its tied head (the book's 163M minus 38.6M)
    assert p.params == n and p.trainable == n
    assert (p.weights, p.gradients, p.optimizer) == (4 * n, 4 * n, 8 * n)  # the "4x" rule
    assert p.activations == 12 * 8 * 1024 * 17 * 768 * 4
    assert p.loss == 512 * 50257 * 4 + 8 * 1024 * 768 * 4
    assert p.peak == 12 * n + max(p.activations + p.loss, 4 * n)
    assert p.chinchilla_tokens == 20 * n
    per_token = 6 * (12 * 12 * 768**2 + 50257 * 768) + 12 * 12 * 1024 * 768
    assert p.flops == pytest.approx(per_token * 10**9)
    assert p.hours == pytest.approx(p.flops / 50e12 / 3600)
    assert p.fits is True
    bf16 = plan(cfg, "full", batch=8, context=1024, dtype="bf16")
    assert bf16.weights == 2 * n and bf16.activations == p.activations / 2


def test_lora_and_qlora_shrink_what_they_should():
    cfg = LlamaConfig.from_name("smollm2-135m")
    full = plan(cfg, "full", batch=4, context=512)
    lora = plan(cfg, "lora", batch=4, context=512, lora_rank=16)
    # rank 16 on every block linear: q,k,v,o (576->576, 576->192 x2, 576->576), gate/up/down
    per_block = 16 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)
    assert lora.trainable == 30 * per_block + 16 * (576 + 49152)  # plus the head
    assert lora.gradients == 4 * lora.trainable and lora.optimizer == 8 * lora.trainable
    q = plan(cfg, "qlora-dq", batch=4, context=512, lora_rank=16)
    linear = 30 * (576 * 576 * 2 + 576 * 192 * 2 + 576 * 1536 * 3) + 49152 * 576
    assert q.weights == pytest.approx(lora.weights - linear * 4 + linear * 4.127 / 8)
    # a LoRA head stays fused with the loss: W + s*B@A and its gradient are the extra
    assert lora.loss == full.loss + 2 * 49152 * 576 * 4
    assert full.peak > lora.peak
    assert q.loss == 3 * 4 * 512 * 49152 * 4  # a 4-bit head cannot join the fused loss
    # without LoRA on the head the loss part is exactly full finetuning's
    blocks = ("q", "k", "v", "out", "ff")
    lora_blocks = plan(cfg, "lora", batch=4, context=512, lora_rank=16, lora_targets=blocks)
    assert lora_blocks.loss == full.loss and lora_blocks.peak < lora.peak
    q_blocks = plan(cfg, "qlora-dq", batch=4, context=512, lora_rank=16, lora_targets=blocks)
    assert q_blocks.peak < lora_blocks.peak
    with pytest.raises(ValueError, match="method"):
        plan(cfg, "half")


def measured_peak(model, batch, context, vocab, lora=False):
    if lora:
        from scratchlm.finetune.lora import apply_lora

        apply_lora(model, 8, 16, ("all",))
    opt = build_optimizer(model, "adamw", 1e-3, 0.1, (0.9, 0.95), "cpu")
    loss = CausalLMLoss(model)
    x = torch.randint(0, vocab, (batch, context))
    loss(x, x).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    with MemoryTracker(model, opt) as mem:  # the second step: optimizer states exist
        loss(x, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return mem.peak_bytes


@pytest.mark.parametrize("name,cfg,method,batch", [
    ("gpt", GPTConfig(vocab_size=2000, context_length=128, n_embd=128, n_head=4, n_layer=4),
     "full", 8),
    ("gpt", GPTConfig(vocab_size=2000, context_length=128, n_embd=128, n_head=4, n_layer=4),
     "full", 1),  # weights-dominated
    ("gpt", GPTConfig(vocab_size=2000, context_length=128, n_embd=128, n_head=4, n_layer=4),
     "lora", 8),
    ("llama", LlamaConfig(vocab_size=2000, context_length=128, n_embd=128, n_layer=4, n_head=4,
                          n_kv_head=2, intermediate_size=320), "full", 8),
])
def test_plan_within_15_percent_of_a_measured_cpu_step(name, cfg, method, batch):
    torch.manual_seed(0)
    model = (Llama if name == "llama" else GPT)(cfg)
    measured = measured_peak(model, batch, 128, cfg.vocab_size, lora=method == "lora")
    predicted = plan(cfg, method, batch=batch, context=128, lora_rank=8).peak
    assert predicted == pytest.approx(measured, rel=0.15), (predicted / 2**20, measured / 2**20)


def test_memory_tracker_counts_storages_once_and_frees():
    with MemoryTracker() as mem:
        a = torch.zeros(1000)  # 4,000 bytes
        v = a[:10]  # a view: nothing new
        b = a * 2
        del b
        c = torch.ones(250)
    assert mem.peak_bytes == 8000 and mem.current_bytes == 5000
    del v, c


def test_plan_reads_a_saved_model_folder(tmp_path):
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.recipes.plan import resolve_config

    cfg = LlamaConfig.from_name("llama-tiny")
    save_pretrained(Llama(cfg), tmp_path)
    assert resolve_config(str(tmp_path)) == cfg


def test_plan_takes_every_preset_name_and_advises_what_is_not_in_use():
    """The names and flags of the other commands (``smollm2-135m-instruct``, ``--lora.rank``);
    a short run's time in seconds, not "0.00 hours"; advice without what was already given."""
    import subprocess
    import sys

    from conftest import ROOT

    def run(*args):
        return subprocess.run([sys.executable, "-m", "scratchlm", "plan", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    r = run("--model", "smollm2-135m-instruct", "--method", "lora", "--lora.rank", "8",
            "--dtype", "bf16", "--tokens", "1e6", "--peak_tflops", "100", "--gpu_memory", "0.01")
    assert r.returncode == 0, r.stderr
    assert "smollm2-135m-instruct, lora: 134,515,008 parameters" in r.stdout
    import re

    assert re.search(r"^time: \d+ s at the given peak and MFU$", r.stdout, re.M), r.stdout
    advice = r.stdout.split("does NOT fit the given GPU memory: ")[1]
    assert "QLoRA (--method qlora)" in advice and "LoRA/QLoRA" not in advice
    assert "bf16" not in advice and "grad checkpointing" in advice
    r = run("--model", "smollm2-135m-instruct", "--lora-rank", "8")
    assert r.returncode != 0 and "--lora-rank" in r.stderr
