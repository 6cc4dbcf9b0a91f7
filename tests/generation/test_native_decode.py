"""The native int8 Llama decode step (csrc/int8.c) against the PyTorch path: same logits within
1e-4, the same greedy tokens, for left-padded batches."""

from __future__ import annotations

import shutil

import pytest
import torch

from scratchlm.generation.engine import Engine, SamplingParams
from scratchlm.generation.native_decode import NativeLlamaDecoder
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.models.llama import Llama, LlamaConfig
from scratchlm.nn.fuse import fuse_projections
from scratchlm.nn.native import llama_layer_kernel
from scratchlm.nn.quant import quantize_int8


@pytest.fixture(autouse=True)
def _needs_compiler():
    if llama_layer_kernel() is None:
        assert shutil.which("cc") is None and shutil.which("gcc") is None, "kernel failed to build"
        pytest.skip("no C compiler")


def _int8_llama(head_dim=None, qkv_bias=False):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=211, context_length=64, n_embd=48, n_layer=3, n_head=6,
                      n_kv_head=2, intermediate_size=80, head_dim=head_dim, qkv_bias=qkv_bias,
                      rope_base=10000.0)
    model = Llama(cfg).eval()
    with torch.no_grad():  # norms away from 1, so a wrong norm weight shows
        for b in model.trf_blocks:
            b.norm1.weight.uniform_(0.5, 1.5)
            b.norm2.weight.uniform_(0.5, 1.5)
    return fuse_projections(quantize_int8(model))


@pytest.mark.parametrize("head_dim,qkv_bias", [(None, False), (12, True)])
def test_native_step_logits_equal_pytorch(head_dim, qkv_bias):
    model = _int8_llama(head_dim, qkv_bias)
    native = NativeLlamaDecoder.create(model)
    assert native is not None
    engine = Engine(model)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33]]
    pad = torch.tensor([0, 5, 3])
    idx = torch.zeros(3, 7, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, 7 - len(p):] = torch.tensor(p)
    with torch.inference_mode():
        ours, ref = engine.new_cache(3, 20, pad), engine.new_cache(3, 20, pad)
        engine._last_logits(idx, ours)
        engine._last_logits(idx, ref)
        nxt = torch.tensor([[1], [2], [3]])
        for _ in range(6):
            got, want = native.logits(nxt, ours), engine._last_logits(nxt, ref)
            assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
            nxt = want.argmax(-1, keepdim=True)
        assert torch.allclose(ours.k[:, :, :, :13], ref.k[:, :, :, :13], atol=1e-5)
        assert torch.allclose(ours.v[:, :, :, :13], ref.v[:, :, :, :13], atol=1e-5)


def test_engine_uses_it_and_generates_the_same_tokens():
    model = _int8_llama()
    engine = Engine(model)
    assert engine.native is not None
    prompts = [[5, 6, 7, 8, 9], [40], [50, 51, 52]]
    params = SamplingParams(max_new_tokens=12)
    got = engine.generate(prompts, params)
    engine.native = None
    assert got == engine.generate(prompts, params)


def test_only_int8_fused_llamas_qualify():
    torch.manual_seed(0)
    llama = Llama(LlamaConfig(vocab_size=50, context_length=16, n_embd=16, n_layer=1, n_head=2,
                              n_kv_head=1, intermediate_size=24))
    assert NativeLlamaDecoder.create(llama) is None  # fp32 weights
    assert NativeLlamaDecoder.create(quantize_int8(llama)) is None  # not fused
    gpt = GPT(GPTConfig(vocab_size=50, context_length=16, n_embd=16, n_layer=1, n_head=2))
    assert NativeLlamaDecoder.create(fuse_projections(quantize_int8(gpt))) is None
