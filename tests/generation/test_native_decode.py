"""The native decode step (nn/csrc/decode.c) against the PyTorch path: same logits within 1e-4,
the same greedy tokens, for left-padded batches; Llama and GPT, float32 and int8 weights,
separate and fused projections, with and without biases."""

from __future__ import annotations

import shutil

import pytest
import torch

from scratchlm.generation.engine import Engine, SamplingParams
from scratchlm.generation.native_decode import NativeDecoder
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.models.llama import Llama, LlamaConfig
from scratchlm.models.qwen3 import Qwen3Config
from scratchlm.nn.fuse import fuse_projections
from scratchlm.nn.native import PANEL_MIN_ROWS, VARIANTS, decode_function
from scratchlm.nn.quant import quantize_int8


@pytest.fixture(autouse=True)
def _needs_compiler():
    if decode_function("llama_layer") is None:
        assert shutil.which("cc") is None and shutil.which("gcc") is None, "kernel failed to build"
        pytest.skip("no C compiler")


def _llama(head_dim=None, qkv_bias=False, weights="int8-fused", config=LlamaConfig):
    torch.manual_seed(0)
    cfg = config(vocab_size=211, context_length=64, n_embd=48, n_layer=3, n_head=6,
                 n_kv_head=2, intermediate_size=80, head_dim=head_dim, qkv_bias=qkv_bias,
                 rope_base=10000.0)
    model = Llama(cfg).eval()
    with torch.no_grad():  # norms away from 1, so a wrong norm weight shows
        for b in model.trf_blocks:
            norms = [b.norm1, b.norm2] + ([b.att.q_norm, b.att.k_norm] if cfg.qk_norm else [])
            for norm in norms:
                norm.weight.uniform_(0.5, 1.5)
    if weights.startswith("int8"):
        quantize_int8(model)
    return fuse_projections(model) if weights.endswith("fused") else model


def _gpt(qkv_bias=True, weights="fp32"):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=211, context_length=64, n_embd=48, n_layer=3, n_head=4,
                          qkv_bias=qkv_bias, init="torch")).eval()
    with torch.no_grad():  # norms away from the identity, so a wrong norm shows
        for b in model.trf_blocks:
            for norm in (b.norm1, b.norm2):
                norm.scale.uniform_(0.5, 1.5)
                norm.shift.uniform_(-0.5, 0.5)
    return quantize_int8(model) if weights == "int8" else model


MODELS = {
    "llama-int8-fused": lambda: _llama(None, False, "int8-fused"),
    "llama-int8-fused-headdim-bias": lambda: _llama(12, True, "int8-fused"),
    "llama-int8-bias": lambda: _llama(None, True, "int8"),
    "llama-fp32": lambda: _llama(None, False, "fp32"),
    "llama-fp32-fused-headdim-bias": lambda: _llama(12, True, "fp32-fused"),
    "qwen3-fp32": lambda: _llama(16, False, "fp32", Qwen3Config),
    "qwen3-int8-fused": lambda: _llama(16, False, "int8-fused", Qwen3Config),
    "gpt-fp32-bias": lambda: _gpt(True, "fp32"),
    "gpt-fp32": lambda: _gpt(False, "fp32"),
    "gpt-int8": lambda: _gpt(True, "int8"),
}


@pytest.fixture(params=list(VARIANTS))
def variant(request, monkeypatch):
    """Each build of the kernels (nn/native.VARIANTS) that this CPU runs"""
    from scratchlm.nn.native import variants

    if request.param not in variants():
        pytest.skip(f"this CPU cannot run the {request.param} build")
    monkeypatch.setenv("SCRATCHLM_NATIVE_VARIANT", request.param)
    return request.param


@pytest.mark.parametrize("rows", [6, 17])
@pytest.mark.parametrize("name", MODELS)
def test_native_step_logits_equal_pytorch(name, rows, variant):
    model = MODELS[name]()
    native = NativeDecoder.create(model)
    assert native is not None
    engine = Engine(model)
    # six rows: float32 weights take four rows of x at a time (dot4x4), then the rest;
    # seventeen: float32 weights as panels (tiles of 12, 4 and 1 rows), blocks eight at a time
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33], [3], [40, 41, 42, 43, 44],
               [9, 8]]
    prompts = (prompts * 3)[:rows]
    pad = torch.tensor([7 - len(p) for p in prompts])
    idx = torch.zeros(len(prompts), 7, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, 7 - len(p):] = torch.tensor(p)
    with torch.inference_mode():
        ours, ref = engine.new_cache(rows, 20, pad), engine.new_cache(rows, 20, pad)
        engine._last_logits(idx, ours)
        engine._last_logits(idx, ref)
        nxt = torch.arange(1, rows + 1)[:, None]
        for _ in range(6):
            got, want = native.logits(nxt, ours), engine._last_logits(nxt, ref)
            assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
            nxt = want.argmax(-1, keepdim=True)
        assert bool(native._packs) == (rows >= PANEL_MIN_ROWS and "fp32" in name)
        assert torch.allclose(ours.k[:, :, :, :13], ref.k[:, :, :, :13], atol=1e-5)
        assert torch.allclose(ours.v[:, :, :, :13], ref.v[:, :, :, :13], atol=1e-5)


@pytest.mark.parametrize("name", ["llama-int8-fused", "llama-fp32", "gpt-fp32-bias", "gpt-int8"])
def test_engine_uses_it_and_generates_the_same_tokens(name):
    model = MODELS[name]()
    engine = Engine(model)
    assert engine.native is not None
    prompts = [[5, 6, 7, 8, 9], [40], [50, 51, 52]]
    params = SamplingParams(max_new_tokens=12)
    got = engine.generate(prompts, params)
    engine.native = None
    assert got == engine.generate(prompts, params)


def test_which_models_qualify():
    from scratchlm.finetune.lora import apply_lora

    def llama(**kw):
        torch.manual_seed(0)
        return Llama(LlamaConfig(vocab_size=50, context_length=16, n_embd=16, n_layer=1,
                                 n_head=2, n_kv_head=1, intermediate_size=24, **kw))

    assert NativeDecoder.create(llama()) is not None  # float32
    assert NativeDecoder.create(quantize_int8(llama())) is not None
    assert NativeDecoder.create(llama(moe={"num_experts": 2})) is None
    assert NativeDecoder.create(llama().to(torch.bfloat16)) is None
    lora = llama()
    apply_lora(lora, rank=2, alpha=4, targets=["q"])
    assert NativeDecoder.create(lora) is None  # adapters are not plain Linears
    def gpt(**kw):
        return GPT(GPTConfig(vocab_size=50, context_length=16, n_embd=16, n_layer=1, n_head=2,
                             **kw))

    assert NativeDecoder.create(gpt()) is not None
    assert NativeDecoder.create(gpt(moe={"num_experts": 2})) is None
    lora = gpt()
    apply_lora(lora, rank=2, alpha=4, targets=["q"])
    assert NativeDecoder.create(lora) is None


def test_new_weights_are_read_after_refresh():
    """A model whose tensors were replaced between requests is decoded with the new ones."""
    model = _llama(weights="fp32")
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=6)
    before = engine.generate([[5, 6, 7]], params)
    other = _llama(weights="fp32")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    model.load_state_dict(other.state_dict(), assign=True)
    after = engine.generate([[5, 6, 7]], params)
    engine.native = None
    assert after == engine.generate([[5, 6, 7]], params)
    assert before != after


def test_batches_read_weights_changed_in_place():
    """Panels (batches of 8+ rows) are packed again when a weight changes in place, as a GRPO
    rollout's merged copy does before each rollout."""
    model = _llama(weights="fp32")
    engine = Engine(model)
    prompts, params = [[5, 6, 7], [9]] * 5, SamplingParams(max_new_tokens=6)
    before = engine.generate(prompts, params)
    assert engine.native._packs
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    after = engine.generate(prompts, params)
    native = engine.native
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    assert engine.generate(prompts, params) == after  # new tensors, the same values
    current = {id(p) for p in model.parameters()}  # the replaced ones are not kept packed
    assert native._packs and all(id(w) in current for w, _, _ in native._packs.values())
    engine.native = None
    assert after == engine.generate(prompts, params)
    assert before != after
    with torch.inference_mode():  # inference tensors keep no version: packed at each request
        model.load_state_dict({k: v + 0.5 for k, v in model.state_dict().items()}, assign=True)
    engine.native = NativeDecoder.create(model)
    again = engine.generate(prompts, params)
    engine.native = None
    assert again == engine.generate(prompts, params)


def test_head_linear_equals_the_linear_and_falls_back():
    from scratchlm.nn.native import HEAD_MAX_ROWS, head_linear

    torch.manual_seed(0)
    head = torch.nn.Linear(48, 1001)  # N % 4 != 0: the zero-padded tail block
    with torch.inference_mode():
        for rows in (5, 32, HEAD_MAX_ROWS):  # single rows, tiles of four, a rollout's batch
            x = torch.randn(rows, 48)
            torch.testing.assert_close(head_linear(head, x), head(x), atol=1e-5, rtol=1e-5)
        big = torch.randn(HEAD_MAX_ROWS + 1, 48)  # more rows: PyTorch's matmul
        assert torch.equal(head_linear(head, big), head(big))
    x = torch.randn(5, 48)
    y = head_linear(head, x)  # with autograd on and a trainable weight: PyTorch, gradients flow
    assert y.requires_grad
    head.requires_grad_(False)  # a frozen head under states that need gradients: PyTorch too
    h = x.clone().requires_grad_()
    head_linear(head, h).sum().backward()
    torch.testing.assert_close(h.grad, head.weight.sum(0).expand(5, 48))


@pytest.mark.parametrize("variant", ["native", "portable"])
def test_panels_equal_the_linear(variant):
    from scratchlm.nn import native

    torch.manual_seed(0)
    kernel = native.decode_function("panel_linear", variant)
    for n, k in ((70, 48), (32, 16), (5, 33)):  # rows past a pair of panels, one pair, fewer
        layer = torch.nn.Linear(k, n)
        panels = native.pack_panels(layer.weight)
        assert panels.numel() == (n + 31) // 32 * 32 * k
        for rows in (1, 3, 4, 8, 12, 17, 32):  # tiles of 12, 4 and 1 rows
            x = torch.randn(rows, k)
            y = torch.empty(rows, n)
            kernel(x.data_ptr(), panels.data_ptr(), layer.bias.data_ptr(), y.data_ptr(), rows,
                   n, k)
            torch.testing.assert_close(y, layer(x).detach(), atol=1e-5, rtol=1e-5)
