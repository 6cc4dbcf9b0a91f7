"""``--device`` / ``--dtype`` of chat, generate and serve: checked before any weight is read."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from scratchlm.models.placement import placement


def test_cpu_placements():
    assert placement() == (torch.device("cpu"), torch.float32)
    assert placement("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)


@pytest.mark.parametrize("device,dtype,message", [
    ("cpu", "fp16", "--dtype fp16 needs CUDA"),
    ("cpu", "float32", "--dtype must be one of fp32, bf16, fp16"),
    ("tpu", "fp32", "--device must be cpu, cuda or cuda:N"),
    ("meta", "fp32", "--device must be cpu, cuda or cuda:N"),
])
def test_bad_placements_are_refused(device, dtype, message):
    with pytest.raises(ValueError, match=message):
        placement(device, dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_by_the_commands():
    for command in ("generate", "chat", "serve"):
        r = subprocess.run([sys.executable, "-m", "scratchlm", command, "--model", "gpt2-124m",
                            "--device", "cuda"], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 2, (command, r.stderr)
        assert "no CUDA device is available here" in r.stderr, (command, r.stderr)


def test_generate_with_bf16_weights_on_the_cpu(tmp_path, small_bpe):
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.models.llama import Llama, LlamaConfig
    from scratchlm.recipes.configs import GenerateConfig
    from scratchlm.recipes.generate import main
    from scratchlm.tokenizers import save_tokenizer

    torch.manual_seed(0)
    save_pretrained(Llama(LlamaConfig(vocab_size=512, context_length=64, n_embd=32, n_layer=2,
                                      n_head=4, n_kv_head=2, intermediate_size=64)), tmp_path)
    save_tokenizer(small_bpe, tmp_path)
    text = main(GenerateConfig(model=str(tmp_path), prompt="I had", max_new_tokens=5,
                               dtype="bf16"))
    assert text.startswith("I had") and len(text) > len("I had")
